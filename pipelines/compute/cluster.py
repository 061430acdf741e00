"""The Dask client of this process: the scheduler the settings name, or a LocalCluster started once and closed
when the process exits."""

from __future__ import annotations

import atexit
import logging

from distributed import Client, LocalCluster

from pipelines.settings import Settings

log = logging.getLogger(__name__)
# A client is the process's default while open (lightgbm.dask waits on futures through the default client): any
# other Dask computation of the process (Feast's Dask offline store, in stock materialization) runs on it too.
_clients: dict[tuple[str, int, str], Client] = {}
_clusters: dict[tuple[str, int, str], LocalCluster] = {}  # the LocalClusters this process started


class DaskUnavailable(RuntimeError):
    """The Dask scheduler named in the settings cannot be reached."""


def dask_client(settings: Settings) -> Client:
    """One client per (scheduler, workers, memory) for the life of the process: Airflow tasks and tests call
    this per step, and starting worker processes costs seconds."""
    key = (settings.dask_scheduler, settings.dask_workers, settings.dask_worker_memory)
    client = _clients.get(key)
    if client is not None and client.status == "running":
        return client
    if settings.dask_scheduler:
        try:
            client = Client(settings.dask_scheduler, timeout="30s")
        except OSError as exc:
            raise DaskUnavailable(
                f"STOREFRONT_DASK_SCHEDULER={settings.dask_scheduler}: no Dask scheduler answers ({exc}); start "
                "one (`dask scheduler` / docs/deploy.md) or unset it for a LocalCluster"
            ) from exc
    else:
        # One thread per worker process: the compute functions are numpy/pandas and hold the GIL in places.
        cluster = LocalCluster(
            n_workers=settings.dask_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=settings.dask_worker_memory,
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = Client(cluster)
        _clusters[key] = cluster
        atexit.register(cluster.close)
        log.info("dask: LocalCluster of %d workers (%s each)", settings.dask_workers, settings.dask_worker_memory)
    atexit.register(client.close)
    _clients[key] = client
    return client


def close_dask_clients() -> None:
    """Close this process's clients now, e.g. before their scheduler stops, so none keeps trying to reconnect, and
    the LocalClusters it started (their worker processes)."""
    while _clients:
        _, client = _clients.popitem()
        client.close()
    while _clusters:
        _, cluster = _clusters.popitem()
        cluster.close()


def partition_count(settings: Settings, client: Client) -> int:
    """Hash partitions of the entity key: the setting, else four per worker thread (load balance)."""
    if settings.dask_partitions > 0:
        return settings.dask_partitions
    threads = sum(client.nthreads().values()) or 1
    return 4 * threads

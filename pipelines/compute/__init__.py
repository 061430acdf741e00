"""Where the heavy steps run: in this process on pandas (default) or on a Dask cluster (``STOREFRONT_COMPUTE``)."""

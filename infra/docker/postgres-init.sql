-- The four PostgreSQL databases of the stack profile, created if missing (safe to run again).
--   storefront_airflow: Airflow metadata (STOREFRONT_AIRFLOW_DB_URI, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)
--   storefront_mlflow:  MLflow backend store (STOREFRONT_MLFLOW_BACKEND_STORE_URI, `mlflow server` only)
--   storefront_mlflow_auth: users and grants of MLflow's basic-auth app (STOREFRONT_MLFLOW_AUTH_DB_URI, server only)
--   storefront_feast:   Feast SQL registry (STOREFRONT_FEAST_REGISTRY)
-- docker compose runs this once, on the first start of an empty data volume (/docker-entrypoint-initdb.d/).
-- On a server of your own run it with psql as a role allowed to create databases; the databases belong to it:
--   psql "postgresql://ADMIN@HOST:5432/postgres" -v ON_ERROR_STOP=1 -f infra/docker/postgres-init.sql
-- CREATE DATABASE cannot run inside a DO block or a function, hence psql's \gexec.
SELECT format('CREATE DATABASE %I', db)
FROM unnest(ARRAY['storefront_airflow', 'storefront_mlflow', 'storefront_mlflow_auth', 'storefront_feast']) AS db
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = db)
\gexec

-- The read-only role the Airflow exporter connects as (monitoring/airflow-queries.yaml reads
-- exactly these tables). Run in Airflow's database after `airflow db migrate` (the tables must
-- exist), as the superuser (service airflow-metrics-role, on every `up`: idempotent);
-- :'password' is a psql variable (psql -v password=...).
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'airflow_metrics') THEN
    CREATE ROLE airflow_metrics LOGIN;
  END IF;
END $$;
ALTER ROLE airflow_metrics PASSWORD :'password';
GRANT CONNECT ON DATABASE airflow TO airflow_metrics;
GRANT USAGE ON SCHEMA public TO airflow_metrics;
GRANT SELECT ON dag, dag_run, task_instance, job TO airflow_metrics;

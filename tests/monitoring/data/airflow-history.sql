-- A small history in Airflow 3.3's metadata schema (after `airflow db migrate`), relative to
-- now(): `retrain` last succeeded 3 days ago, then two scheduled runs failed and one runs for
-- 5 hours; one run quarantined its batch 2 hours ago, one 30 hours ago (outside the 24 h window);
-- `monitor` succeeds; the scheduler's heartbeat is 5 seconds old.
INSERT INTO dag_bundle (name, active) VALUES ('dags-folder', true);
INSERT INTO dag (dag_id, is_paused, is_stale, bundle_name, timetable_type, partition_mapper_info,
                 max_active_tasks, max_consecutive_failed_dag_runs, has_task_concurrency_limits)
VALUES ('retrain', false, false, 'dags-folder', 'AssetOrTimeSchedule', '{}', 16, 0, false),
       ('monitor', false, false, 'dags-folder', 'CronTriggerTimetable', '{}', 16, 0, false),
       ('old_dag', true, true, 'dags-folder', 'NullTimetable', '{}', 16, 0, false);
INSERT INTO dag_run (dag_id, run_id, run_type, state, run_after, start_date, end_date) VALUES
  ('retrain', 'scheduled__d-4', 'scheduled', 'success', now() - interval '4 days',
   now() - interval '4 days', now() - interval '4 days' + interval '10 minutes'),
  ('retrain', 'manual__d-3', 'manual', 'success', now() - interval '3 days',
   now() - interval '3 days', now() - interval '3 days' + interval '12 minutes'),
  ('retrain', 'scheduled__d-2', 'scheduled', 'failed', now() - interval '2 days',
   now() - interval '2 days', now() - interval '2 days' + interval '3 minutes'),
  ('retrain', 'scheduled__d-1', 'scheduled', 'failed', now() - interval '1 day',
   now() - interval '1 day', now() - interval '1 day' + interval '3 minutes'),
  ('retrain', 'asset_triggered__stuck', 'asset_triggered', 'running', now() - interval '5 hours',
   now() - interval '5 hours', NULL),
  ('retrain', 'manual__q-recent', 'manual', 'success', now() - interval '2 hours',
   now() - interval '2 hours', now() - interval '2 hours' + interval '1 minute'),
  ('retrain', 'manual__q-old', 'manual', 'success', now() - interval '30 hours',
   now() - interval '30 hours', now() - interval '30 hours' + interval '1 minute'),
  ('monitor', 'scheduled__m-1', 'scheduled', 'success', now() - interval '30 minutes',
   now() - interval '30 minutes', now() - interval '29 minutes');
INSERT INTO task_instance (id, task_id, dag_id, run_id, try_number, pool, pool_slots, state,
                           start_date, end_date)
SELECT gen_random_uuid(), t.task_id, 'retrain', t.run_id, 1, 'default_pool', 1, t.state,
       r.start_date, r.start_date + interval '30 seconds'
FROM (VALUES ('scheduled__d-4', 'validate', 'success'), ('scheduled__d-4', 'deploy', 'success'),
             ('scheduled__d-2', 'validate', 'success'), ('scheduled__d-2', 'train', 'failed'),
             ('manual__q-recent', 'validate', 'skipped'), ('manual__q-recent', 'train', 'skipped'),
             ('manual__q-old', 'validate', 'skipped')) AS t(run_id, task_id, state)
JOIN dag_run r ON r.dag_id = 'retrain' AND r.run_id = t.run_id;
INSERT INTO job (dag_id, state, job_type, start_date, latest_heartbeat, hostname)
VALUES (NULL, 'running', 'SchedulerJob', now() - interval '1 hour', now() - interval '5 seconds',
        'scheduler'),
       (NULL, 'failed', 'SchedulerJob', now() - interval '2 days', now() - interval '2 days',
        'old-scheduler');

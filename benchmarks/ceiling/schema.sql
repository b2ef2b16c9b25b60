-- A minimal jobs table for the database's own ceiling, pre-filled with :rows pending jobs.
CREATE TABLE jobs (
    id bigserial PRIMARY KEY,
    state text NOT NULL DEFAULT 'pending',
    priority int NOT NULL DEFAULT 0,
    payload jsonb,
    locked_by bigint,
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX jobs_pending ON jobs (priority, id) WHERE state = 'pending';
INSERT INTO jobs (payload) SELECT jsonb_build_object('k', g) FROM generate_series(1, :rows) g;
VACUUM ANALYZE jobs;

-- One loop of a worker at the database's ceiling: claim 100 pending jobs (one statement, its
-- own transaction), then mark those 100 done (one statement, its own transaction).
\set token random(1, 9000000000000000)
WITH claimed AS (
    UPDATE jobs SET state = 'running', locked_by = :token, started_at = now()
    FROM (SELECT id FROM jobs WHERE state = 'pending' ORDER BY priority, id
          LIMIT 100 FOR UPDATE SKIP LOCKED) AS next
    WHERE jobs.id = next.id
    RETURNING jobs.id
)
SELECT coalesce(min(id), 0) AS lo, coalesce(max(id), -1) AS hi FROM claimed \gset
UPDATE jobs SET state = 'done', finished_at = now()
WHERE id BETWEEN :lo AND :hi AND locked_by = :token AND state = 'running';

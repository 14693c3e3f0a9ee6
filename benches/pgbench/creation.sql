-- A package creation's statements as the writer sends them (BEGIN, the position, the
-- package and its retention state, the event, COMMIT), for pgbench: what the database alone
-- spends on a creation, to compare schema changes (run before and after one, interleaved, on a
-- database migrated by `artifactstore migrate`, tenant `default` present):
--
--   pgbench -n -M prepared -c 16 -j 2 -T 5 -f benches/pgbench/creation.sql "$DATABASE_URL"
--
-- The events stay unnumbered (no sequencer runs): delete them between runs of a comparison
-- (`ALTER TABLE events DISABLE TRIGGER USER; TRUNCATE events, retention_state, packages,
-- tenant_usage CASCADE; ALTER TABLE events ENABLE TRIGGER USER;` on a scratch database).
BEGIN;
SELECT nextval('event_positions') AS pos, gen_random_uuid() AS pid, gen_random_uuid() AS eid \gset
INSERT INTO packages (id, tenant, producer, subject, retention_class, metadata, status, created_at, created_position) SELECT i, t, p, s, c, m, 'open', a, q FROM unnest(ARRAY[:pid::uuid], ARRAY['default'::text], ARRAY['w'::text], ARRAY['s'::text], ARRAY['standard'::text], ARRAY['{}'::jsonb], ARRAY[now()], ARRAY[:pos::int8]) WITH ORDINALITY AS u(i, t, p, s, c, m, a, q, o) ORDER BY o;
INSERT INTO retention_state (package_id, tenant, expires_at, legal_hold) SELECT i, t, NULL, false FROM unnest(ARRAY[:pid::uuid], ARRAY['default'::text]) WITH ORDINALITY AS u(i, t, o) ORDER BY o;
INSERT INTO events (position, ticket, id, type, tenant, subject_id, occurred_at, payload, digest) WITH t AS MATERIALIZED (SELECT nextval('event_tickets') AS ticket) SELECT e.position, t.ticket, e.id, e.type, e.tenant, e.subject_id, e.occurred_at, e.payload, e.digest FROM t, unnest(ARRAY[:pos::int8], ARRAY[:eid::uuid], ARRAY['package.created'::text], ARRAY['default'::text], ARRAY[:pid::uuid], ARRAY[now()], ARRAY[decode(repeat('ab',120),'hex')], ARRAY[decode(repeat('cd',32),'hex')]) AS e(position, id, type, tenant, subject_id, occurred_at, payload, digest);
COMMIT;

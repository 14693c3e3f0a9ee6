-- Retrieval records: every download, manifest read and package read by a token, kept apart
-- from the event log (reads take no sequence numbers and change no view), written in batches
-- off the request path and deleted after ARTIFACTSTORE_RETRIEVAL_RECORDS_DAYS by the worker.
-- No foreign keys: a record outlives what it names (an expired or withdrawn package).
CREATE TABLE retrieval_records (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant       text NOT NULL,
    token_name   text NOT NULL,
    what         text NOT NULL CHECK (what IN ('package', 'manifest', 'file')),
    package_id   uuid,
    file_id      uuid,
    range_start  bigint,
    range_end    bigint,
    bytes_served bigint NOT NULL,
    status       smallint NOT NULL,
    outcome      text NOT NULL,
    at           timestamptz NOT NULL,
    client_addr  text,
    request_id   text
);
-- A tenant's records in order (the audit listing pages by id), the same for one package or
-- one file (so a filtered page reads only its rows, however many the tenant has), and the
-- pruning by age.
CREATE INDEX retrieval_records_tenant ON retrieval_records (tenant, id);
CREATE INDEX retrieval_records_package ON retrieval_records (tenant, package_id, id)
    WHERE package_id IS NOT NULL;
CREATE INDEX retrieval_records_file ON retrieval_records (tenant, file_id, id)
    WHERE file_id IS NOT NULL;
CREATE INDEX retrieval_records_at ON retrieval_records (at);

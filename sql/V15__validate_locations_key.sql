-- Checks the rows that were there when V14 replaced the key (SHARE UPDATE EXCLUSIVE: reads
-- and writes of storage_locations go on meanwhile). New rows were checked from V14 on.
ALTER TABLE storage_locations VALIDATE CONSTRAINT storage_locations_blake3_fkey;

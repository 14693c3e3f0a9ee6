// The SDK against a real server: ARTIFACTSTORE_URL and ARTIFACTSTORE_TOKEN (read, write and
// admin on its tenant) name it; scripts/e2e/run starts one and runs these.

import assert from "node:assert/strict";
import { createHash, randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { blake3 } from "@noble/hashes/blake3.js";
import { bytesToHex } from "@noble/hashes/utils.js";
import { ArtifactStore, DigestMismatch, ProblemError } from "../src/index.js";

const URL = process.env.ARTIFACTSTORE_URL!;
const TOKEN = process.env.ARTIFACTSTORE_TOKEN!;
const store = new ArtifactStore(URL, TOKEN);

function dataOf(size: number, seed: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(size);
  let block = createHash("sha256").update(String(seed)).digest();
  for (let at = 0; at < size; at += 32) {
    block = createHash("sha256").update(block).digest();
    out.set(block.subarray(0, Math.min(32, size - at)), at);
  }
  return out;
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const b3 = (b: Uint8Array) => bytesToHex(blake3(b));
const newPackage = () =>
  store.createPackage({ producer: "sdk-typescript", subject: `test-${randomUUID()}`, metadata: { suite: "sdk-ts", "git.sha": "abc123" } });

async function rejects(call: Promise<unknown>, status: number): Promise<ProblemError> {
  try {
    await call;
  } catch (e) {
    assert.ok(e instanceof ProblemError, `${e}`);
    assert.equal(e.status, status, e.message);
    return e;
  }
  assert.fail(`expected a ${status}`);
}

test("the whole flow", async () => {
  const dir = await mkdtemp(join(tmpdir(), "sdk-ts-"));
  const pkg = await newPackage();
  const raw = dataOf(10_000, 1);
  const put = await store.putFile(pkg.id, "raw/one.bin", raw, { expectedDigest: `sha256:${sha256(raw)}` });
  assert.equal(put.digests.sha256, sha256(raw));

  await writeFile(join(dir, "two.txt"), "sent as a form\n");
  const form = await store.postFile(pkg.id, "form/two.txt", join(dir, "two.txt"), { mediaType: "text/plain" });
  assert.equal(form.media_type, "text/plain");
  assert.equal(form.size, 15);

  const big = dataOf(3 * 1024 * 1024 + 17, 2);
  await writeFile(join(dir, "three.bin"), big);
  const session = await store.uploadFile(pkg.id, "session/three.bin", join(dir, "three.bin"), { chunkSize: 1024 * 1024 });
  assert.equal(session.digests.blake3, b3(big));

  await mkdir(join(dir, "tree", "sub"), { recursive: true });
  await writeFile(join(dir, "tree", "a.txt"), "a");
  await writeFile(join(dir, "tree", "sub", "b.txt"), "bb");
  const tree = await store.uploadDirectory(pkg.id, join(dir, "tree"), { prefix: "tree/" });
  assert.deepEqual(tree.map((f) => f.relative_path), ["tree/a.txt", "tree/sub/b.txt"]);

  const provenance = { predicate_type: "https://example.com/ci/v1", predicate: { job: "nightly", run: 4512 } };
  const final = await store.finalize(pkg.id, provenance);
  assert.equal(final.status, "finalized");
  assert.equal(final.file_count, 5);

  const manifest = (await store.manifest(pkg.id)) as { files: { relative_path: string }[] };
  const json = await store.manifestJson(pkg.id);
  assert.deepEqual(
    manifest.files.map((f) => f.relative_path),
    json.files.map((f) => f.relative_path),
  );
  assert.equal(manifest.files.length, 5);
  assert.deepEqual(json.provenance.supplied, provenance);

  const files = new Map((await store.getPackage(pkg.id)).files!.map((f) => [f.relative_path, f]));
  const target = join(dir, "down.bin");
  await store.download(files.get("session/three.bin")!.id, target, { expectedDigest: `blake3:${b3(big)}` });
  assert.deepEqual(new Uint8Array(await readFile(target)), big);
  assert.deepEqual(await store.readRange(files.get("session/three.bin")!.id, 1000, 1999), big.subarray(1000, 2000));

  const found: string[] = [];
  for await (const p of store.listPackages({ meta: { suite: "sdk-ts", "git.sha": "abc123" }, producer: "sdk-typescript" })) found.push(p.id);
  assert.ok(found.includes(pkg.id));
  for await (const p of store.listPackages({ meta: { suite: "sdk-ts", "git.sha": "other" } })) assert.fail(`unexpected ${p.id}`);

  // The typed, generated client reaches every operation too.
  const { data, error } = await store.api.GET("/packages/{id}", { params: { path: { id: pkg.id } } });
  assert.equal(error, undefined);
  assert.equal(data!.id, pkg.id);
});

test("an interrupted session resumes where the server says", async () => {
  const dir = await mkdtemp(join(tmpdir(), "sdk-ts-"));
  const pkg = await newPackage();
  const data = dataOf(2 * 1024 * 1024 + 5, 3);
  await writeFile(join(dir, "resumed.bin"), data);
  const upload = await store.startUpload(pkg.id, "resumed.bin", { size: data.length, expectedDigest: `blake3:${b3(data)}` });
  const first = await fetch(URL + upload.upload_url, {
    method: "PATCH",
    body: data.subarray(0, 700_000),
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Range": `bytes 0-699999/${data.length}` },
  });
  assert.equal(first.status, 202);
  // A chunk from a stale offset is answered 416 with where the session is (uploadFile resumes
  // from that offset, as it does from the session's).
  const stale = await fetch(URL + upload.upload_url, {
    method: "PATCH",
    body: data.subarray(0, 10),
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Range": `bytes 0-9/${data.length}` },
  });
  assert.equal(stale.status, 416);
  assert.equal(((await stale.json()) as { offset: number }).offset, 700_000);
  const done = await store.uploadFile(pkg.id, "resumed.bin", join(dir, "resumed.bin"), { session: upload.id, chunkSize: 512 * 1024 });
  assert.equal(done.size, data.length);
  assert.equal(done.digests.blake3, b3(data));
});

test("ids are UUIDs before they reach a URL", async () => {
  for (const smuggled of ["../../usage", "x?y", "01a24fa5-b469-76a7-a397-af361809f699/../.."]) {
    await assert.rejects(store.getPackage(smuggled), RangeError);
    await assert.rejects(store.getFile(smuggled), RangeError);
  }
});

test("a download that is not what was asked for writes nothing", async () => {
  const dir = await mkdtemp(join(tmpdir(), "sdk-ts-"));
  const pkg = await newPackage();
  const info = await store.putFile(pkg.id, "x.bin", "the bytes");
  await assert.rejects(store.download(info.id, join(dir, "x.bin"), { expectedDigest: `sha256:${"0".repeat(64)}` }), DigestMismatch);
  assert.deepEqual(await readdir(dir), []);
});

test("the event log is an async iterator", async () => {
  const pkg = await newPackage();
  await store.putFile(pkg.id, "e.txt", "event");
  await store.finalize(pkg.id);
  const all = [];
  for await (const e of store.events(0, { follow: false })) all.push(e);
  const mine = all.filter((e) => e.subject_id === pkg.id).map((e) => e.type);
  assert.deepEqual(mine, ["v1.package.created", "v1.file.ingested", "v1.package.finalized"]);
  const sequences = all.map((e) => e.sequence);
  assert.deepEqual(sequences, [...sequences].sort((a, b) => a - b));
  // Following: a commit made after the wait began wakes it.
  const tail = store.events(sequences.at(-1)!, { wait: 10 });
  const next = tail.next();
  const other = await newPackage();
  assert.equal((await next).value!.subject_id, other.id);
  await tail.return(undefined);
});

test("retention: holds and classes", async () => {
  const pkg = await newPackage();
  assert.equal((await store.setLegalHold(pkg.id, "litigation 42")).retention.legal_hold, true);
  assert.equal((await store.releaseLegalHold(pkg.id)).retention.legal_hold, false);
  assert.equal((await store.changeRetention(pkg.id, "long")).retention_class, "long");
});

test("files and packages are removed", async () => {
  const pkg = await newPackage();
  await store.putFile(pkg.id, "a/gone.txt", "gone");
  await store.deleteFile(pkg.id, "a/gone.txt");
  await rejects(store.deleteFile(pkg.id, "a/gone.txt"), 404);
  const abandoned = await store.deletePackage(pkg.id, "not needed");
  assert.equal(abandoned.status, "abandoned");
  assert.equal(abandoned.removal?.reason, "not needed");
  await rejects(store.getPackage(pkg.id), 410);
});

test("refusals are ProblemErrors with their problem", async () => {
  const pkg = await newPackage();
  const missing = await rejects(store.getPackage(randomUUID()), 404);
  assert.ok(missing.requestId);
  // `..` is refused before sending (fetch would resolve it away); the server refuses it too.
  await assert.rejects(store.putFile(pkg.id, "a/../b", "x"), RangeError);
  await rejects(store.putFile(pkg.id, "a\\b\u0000", "x"), 422);
  await rejects(store.putFile(pkg.id, "wrong.bin", "x", { expectedDigest: `sha256:${"0".repeat(64)}` }), 422);
  const first = await store.putFile(pkg.id, "notes.txt", "first");
  await store.putFile(pkg.id, "notes.txt", "second", { ifMatch: `"${first.content_address}"` });
  // The tag of a file no longer there: 412, nothing changes.
  await rejects(store.putFile(pkg.id, "notes.txt", "third", { ifMatch: `"${first.content_address}"` }), 412);
  await store.finalize(pkg.id);
  await rejects(store.putFile(pkg.id, "late.bin", "x"), 409);
  await rejects(new ArtifactStore(URL, "not-a-token").getPackage(pkg.id), 401);
});

// artifact-store's TypeScript client: the types openapi-typescript generates from the server's
// spec, an openapi-fetch client over them (`store.api`, every operation typed), and the helpers
// streaming needs: resumable uploads from disk by session, downloads to a path with their
// digests verified, the event log as an async iterator, problems as `ProblemError`.

import { createHash } from "node:crypto";
import { createReadStream, openAsBlob } from "node:fs";
import { mkdtemp, open, readdir, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join, relative, sep } from "node:path";
import { blake3 } from "@noble/hashes/blake3.js";
import { bytesToHex } from "@noble/hashes/utils.js";
import { decode as decodeCbor } from "cborg";
import createClient, { type Client } from "openapi-fetch";
import type { components, paths } from "./schema.js";

export type { components, paths } from "./schema.js";
export type Package = components["schemas"]["Package"];
export type FileInfo = components["schemas"]["FileInfo"];
export type Upload = components["schemas"]["Upload"];
export type Problem = components["schemas"]["Problem"];
export type StoredEvent = components["schemas"]["EventJson"];

const MiB = 1024 * 1024;

/** A request the server refused or could not answer, with its RFC 7807 problem. */
export class ProblemError extends Error {
  readonly status: number;
  readonly problem: Partial<Problem>;
  /** Seconds to wait before retrying (429, 503), when the server said. */
  readonly retryAfter?: number;

  constructor(status: number, problem: Partial<Problem>, retryAfter?: number) {
    const where = problem.request_id ? ` (request ${problem.request_id})` : "";
    super(`${status} ${problem.title ?? ""}: ${problem.detail ?? ""}${where}`);
    this.name = "ProblemError";
    this.status = status;
    this.problem = problem;
    this.retryAfter = retryAfter;
  }

  /** The request's id: quote it to the operator. */
  get requestId(): string | undefined {
    return this.problem.request_id;
  }

  /** For an upload chunk that does not start where the session is: where it is. */
  get offset(): number | undefined {
    return this.problem.offset;
  }
}

/** Downloaded bytes whose digest is not the one named; nothing was written. */
export class DigestMismatch extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DigestMismatch";
  }
}

/** The first 64 KiB of an error answer's body: a problem document is far smaller, and
 * whatever else a server (or a proxy before it) sends is not read whole. */
async function headOf(response: Response, most = 64 * 1024): Promise<string> {
  const parts: Uint8Array[] = [];
  let length = 0;
  const reader = response.body?.getReader();
  while (reader && length < most) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value.subarray(0, most - length));
    length += Math.min(value.length, most - length);
  }
  await reader?.cancel();
  return Buffer.concat(parts).toString("utf8");
}

async function problemOf(response: Response): Promise<ProblemError> {
  const body = await headOf(response);
  let problem: Partial<Problem>;
  try {
    problem = JSON.parse(body) as Partial<Problem>;
  } catch {
    problem = { title: response.statusText, detail: body.slice(0, 1024) };
  }
  const retry = response.headers.get("retry-after");
  return new ProblemError(response.status, problem, retry && /^\d+$/.test(retry) ? Number(retry) : undefined);
}

async function checked(response: Response): Promise<Response> {
  if (response.status >= 400) throw await problemOf(response);
  return response;
}

/** A relative path's segments percent-encoded. `.` and `..` (which the server refuses) are
 * refused here: WHATWG URL parsing, which `fetch` applies, would resolve them away, encoded or
 * not, and send the bytes to another path. */
function filePath(relativePath: string): string {
  const segments = relativePath.split("/");
  const bad = segments.find((s) => s === "." || s === ".." || s.toLowerCase().replaceAll("%2e", ".") === "..");
  if (bad !== undefined) throw new RangeError(`relative path ${JSON.stringify(relativePath)}: a segment may not be \`${bad}\``);
  return segments.map(encodeURIComponent).join("/");
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** An id as a UUID: anything else (a `../` smuggled in an id) never reaches a URL. */
function checkedId(value: string): string {
  if (!UUID.test(value)) throw new RangeError(`${JSON.stringify(value)} is not an id (a UUID)`);
  return value.toLowerCase();
}

/** Waits before the next try after `error` and returns the failures so far; throws `error` if
 * it will not pass (or the tries ran out). What passes: a network failure (fetch's TypeError),
 * 429 (a session busy with another request, or with the claim of a server that died), 502, 503
 * and 504 (the server, or the one behind a load balancer, away for now). */
async function waitToRetry(error: unknown, failures: number, attempts: number): Promise<number> {
  const passes = error instanceof ProblemError ? [429, 502, 503, 504].includes(error.status) : error instanceof TypeError;
  if (!passes || ++failures >= attempts) throw error;
  const asked = error instanceof ProblemError && error.retryAfter ? error.retryAfter * 1000 : 0;
  await new Promise((resolve) => setTimeout(resolve, Math.max(asked, Math.min(100 * 2 ** failures, 5000))));
  return failures;
}

async function blake3OfFile(path: string): Promise<string> {
  const hasher = blake3.create();
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * MiB })) {
    hasher.update(chunk as Uint8Array);
  }
  return bytesToHex(hasher.digest());
}

export interface UploadOptions {
  /** An upload session to resume (from `startUpload`, or an interrupted call). */
  session?: string;
  chunkSize?: number;
  mediaType?: string;
  replace?: boolean;
  /** Failed chunks in a row before giving up. */
  attempts?: number;
}

/** A connection to one artifact-store server with one token. */
export class ArtifactStore {
  /** The generated, typed client: every operation of the spec. */
  readonly api: Client<paths>;
  private readonly baseUrl: string;
  private readonly headers: Record<string, string>;

  constructor(baseUrl: string, token: string) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.headers = { Authorization: `Bearer ${token}` };
    this.api = createClient<paths>({ baseUrl: this.baseUrl, headers: this.headers });
  }

  private async request(method: string, path: string, init: RequestInit & { query?: URLSearchParams } = {}) {
    const url = this.baseUrl + path + (init.query && [...init.query].length ? `?${init.query}` : "");
    const headers = { ...this.headers, ...(init.headers as Record<string, string> | undefined) };
    return checked(await fetch(url, { ...init, method, headers }));
  }

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const init: RequestInit = body === undefined ? {} : { body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
    return (await (await this.request(method, path, init)).json()) as T;
  }

  // Packages

  async createPackage(p: { producer: string; subject: string; retentionClass?: string; metadata?: Record<string, string> }): Promise<Package> {
    return this.json("POST", "/packages", {
      producer: p.producer,
      subject: p.subject,
      metadata: p.metadata ?? {},
      ...(p.retentionClass ? { retention_class: p.retentionClass } : {}),
    });
  }

  async getPackage(id: string): Promise<Package> {
    return this.json("GET", `/packages/${checkedId(id)}`);
  }

  /** Every package that matches, newest first, page after page. */
  async *listPackages(filter: {
    producer?: string;
    subject?: string;
    retentionClass?: string;
    status?: "open" | "finalized";
    meta?: Record<string, string>;
    pageSize?: number;
  } = {}): AsyncGenerator<Package> {
    const base = new URLSearchParams({ limit: String(filter.pageSize ?? 100) });
    for (const [name, value] of [["producer", filter.producer], ["subject", filter.subject], ["retention_class", filter.retentionClass], ["status", filter.status]]) {
      if (value !== undefined) base.append(name!, value);
    }
    for (const [key, value] of Object.entries(filter.meta ?? {})) base.append("meta", `${key}=${value}`);
    let cursor: string | undefined;
    do {
      const query = new URLSearchParams(base);
      if (cursor) query.set("cursor", cursor);
      const page = (await (await this.request("GET", "/packages", { query })).json()) as components["schemas"]["PackageList"];
      yield* page.items;
      cursor = page.next_cursor ?? undefined;
    } while (cursor);
  }

  /** Makes the package immutable, with its manifest. `provenance` (an SLSA provenance
   * predicate with its `predicate_type`, or any JSON object whose numbers are integers) is
   * recorded as given in the manifest's `provenance.supplied` and the signed attestation. */
  async finalize(id: string, provenance?: components["schemas"]["SuppliedProvenance"]): Promise<Package> {
    return this.json("POST", `/packages/${checkedId(id)}/finalize`, provenance === undefined ? undefined : { provenance });
  }

  /** Abandons an open package, or withdraws a finalized one (an admin token's): its files go,
   * its record stays (`status`, `removal`). */
  async deletePackage(id: string, reason?: string): Promise<Package> {
    return this.json("DELETE", `/packages/${checkedId(id)}`, reason === undefined ? undefined : { reason });
  }

  /** Removes the file at a path of an open package. */
  async deleteFile(packageId: string, relativePath: string): Promise<void> {
    await this.request("DELETE", `/packages/${checkedId(packageId)}/files/${filePath(relativePath)}`);
  }

  /** The manifest decoded from its canonical CBOR, whose BLAKE3 is checked against the digest
   * the server names (`ETag`). */
  async manifest(id: string): Promise<Record<string, unknown>> {
    const response = await this.request("GET", `/packages/${checkedId(id)}/manifest`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    const named = (response.headers.get("etag") ?? "").replaceAll('"', "");
    const actual = `blake3:${bytesToHex(blake3(bytes))}`;
    if (actual !== named) throw new DigestMismatch(`manifest of ${id}: ${actual}, the server names ${named}`);
    return decodeCbor(bytes, { useMaps: false }) as Record<string, unknown>;
  }

  /** The manifest's canonical JSON projection (RFC 8785). */
  async manifestJson(id: string): Promise<components["schemas"]["ManifestJson"]> {
    return this.json("GET", `/packages/${checkedId(id)}/manifest.json`);
  }

  // Retention

  async setLegalHold(id: string, reason: string): Promise<Package> {
    return this.json("PUT", `/packages/${checkedId(id)}/legal-hold`, { reason });
  }

  async releaseLegalHold(id: string): Promise<Package> {
    return this.json("DELETE", `/packages/${checkedId(id)}/legal-hold`);
  }

  async changeRetention(id: string, retentionClass: string, force = false): Promise<Package> {
    return this.json("PATCH", `/packages/${checkedId(id)}/retention`, { retention_class: retentionClass, force });
  }

  // Files in

  /** One request with the bytes: for small files. */
  async putFile(
    packageId: string,
    relativePath: string,
    data: Uint8Array<ArrayBuffer> | string,
    o: { mediaType?: string; expectedDigest?: string; replace?: boolean; ifMatch?: string } = {},
  ): Promise<FileInfo> {
    const query = new URLSearchParams();
    if (o.expectedDigest) query.set("expected_digest", o.expectedDigest);
    if (o.replace) query.set("replace", "true");
    // `ifMatch` (an ETag, `"` + file.content_address + `"`, or `*`): replace the file at the
    // path only while it is that one, else a 412 ProblemError.
    const headers: Record<string, string> = { "Content-Type": o.mediaType ?? "application/octet-stream" };
    if (o.ifMatch) headers["If-Match"] = o.ifMatch;
    const response = await this.request("PUT", `/packages/${checkedId(packageId)}/files/${filePath(relativePath)}`, {
      query,
      body: data,
      headers,
    });
    return (await response.json()) as FileInfo;
  }

  /** A `multipart/form-data` upload of a file on disk (what an HTML form sends), streamed
   * from the file. */
  async postFile(
    packageId: string,
    relativePath: string,
    source: string,
    o: { mediaType?: string; replace?: boolean } = {},
  ): Promise<FileInfo> {
    const form = new FormData();
    form.append("relative_path", relativePath);
    const blob = await openAsBlob(source, { type: o.mediaType ?? "application/octet-stream" });
    form.append("file", blob, basename(source));
    const query = new URLSearchParams();
    if (o.replace) query.set("replace", "true");
    const response = await this.request("POST", `/packages/${checkedId(packageId)}/files`, { query, body: form });
    return (await response.json()) as FileInfo;
  }

  /** An upload session: send its bytes with `uploadFile(..., { session })`. */
  async startUpload(
    packageId: string,
    relativePath: string,
    o: { size?: number; expectedDigest?: string; mediaType?: string; replace?: boolean } = {},
  ): Promise<Upload> {
    return this.json("POST", "/uploads", {
      package_id: checkedId(packageId),
      relative_path: relativePath,
      replace: o.replace ?? false,
      ...(o.size !== undefined ? { size: o.size } : {}),
      ...(o.expectedDigest ? { expected_digest: o.expectedDigest } : {}),
      ...(o.mediaType ? { media_type: o.mediaType } : {}),
    });
  }

  async getUpload(id: string): Promise<Upload> {
    return this.json("GET", `/uploads/${checkedId(id)}`);
  }

  /** Uploads a file on disk through an upload session, in chunks, and completes it. The file's
   * BLAKE3 goes with the session (the server refuses other bytes); a chunk that fails (network,
   * 503) is resumed from the offset the session holds, up to `attempts` times in a row. */
  async uploadFile(packageId: string, relativePath: string, source: string, o: UploadOptions = {}): Promise<FileInfo> {
    const size = (await stat(source)).size;
    const chunkSize = o.chunkSize ?? 16 * MiB;
    const upload = o.session
      ? await this.getUpload(o.session)
      : await this.startUpload(packageId, relativePath, {
          size,
          expectedDigest: `blake3:${await blake3OfFile(source)}`,
          mediaType: o.mediaType,
          replace: o.replace,
        });
    const attempts = o.attempts ?? 12;
    let offset = upload.offset;
    let failures = 0;
    const file = await open(source, "r");
    try {
      while (offset < size) {
        const chunk = new Uint8Array(Math.min(chunkSize, size - offset));
        const { bytesRead } = await file.read(chunk, 0, chunk.length, offset);
        const end = offset + bytesRead - 1;
        try {
          const response = await this.request("PATCH", upload.upload_url, {
            body: chunk.subarray(0, bytesRead),
            headers: { "Content-Range": `bytes ${offset}-${end}/${size}`, "Content-Type": "application/octet-stream" },
          });
          offset = Number(response.headers.get("upload-offset"));
          failures = 0;
        } catch (e) {
          // The session is elsewhere than this chunk thought: go on from there (the same
          // offset again would be no progress).
          if (e instanceof ProblemError && e.status === 416 && e.offset !== undefined && e.offset !== offset) {
            offset = e.offset;
            continue;
          }
          failures = await waitToRetry(e, failures, attempts);
          // Where the session is now (else: this try's failure).
          offset = await this.getUpload(upload.id).then((u) => u.offset, () => offset);
        }
      }
    } finally {
      await file.close();
    }
    // Completing is retried the same way (429: a completion still running, say one whose
    // answer was lost); a session gone after such a try may have become the file.
    failures = 0;
    for (;;) {
      try {
        return await this.json<FileInfo>("POST", `/uploads/${checkedId(upload.id)}/complete`);
      } catch (e) {
        if (e instanceof ProblemError && e.status === 404 && failures > 0) {
          const digest = await blake3OfFile(source);
          const files = (await this.getPackage(upload.package_id)).files ?? [];
          const made = files.find((f) => f.relative_path === upload.relative_path && f.digests.blake3 === digest);
          if (made) return made;
        }
        failures = await waitToRetry(e, failures, attempts);
      }
    }
  }

  /** Every regular file under `root` (symbolic links not followed), in path order, named
   * `prefix` + its path relative to `root` with `/` separators. */
  async uploadDirectory(packageId: string, root: string, o: UploadOptions & { prefix?: string } = {}): Promise<FileInfo[]> {
    const files: string[] = [];
    const walk = async (dir: string) => {
      const entries = await readdir(dir, { withFileTypes: true });
      entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      for (const entry of entries) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) await walk(path);
        else if (entry.isFile()) files.push(path);
      }
    };
    await walk(root);
    const uploaded: FileInfo[] = [];
    for (const path of files) {
      const name = (o.prefix ?? "") + relative(root, path).split(sep).join("/");
      uploaded.push(await this.uploadFile(packageId, name, path, o));
    }
    return uploaded;
  }

  // Files out

  async getFile(id: string): Promise<FileInfo> {
    return this.json("GET", `/files/${checkedId(id)}`);
  }

  /** Bytes `start` to `end` (inclusive) of a file. */
  async readRange(id: string, start: number, end: number): Promise<Uint8Array> {
    const response = await this.request("GET", `/files/${checkedId(id)}/download`, { headers: { Range: `bytes=${start}-${end}` } });
    if (response.status !== 206) throw new Error(`the server answered ${response.status} to a range`);
    return new Uint8Array(await response.arrayBuffer());
  }

  /** Streams a file to `destination`, hashing as it goes: the bytes must have the BLAKE3 and
   * SHA-256 the server records (and `expectedDigest`, if given), else `DigestMismatch` and
   * nothing is written. The file appears at `destination` whole or not at all. */
  async download(id: string, destination: string, o: { expectedDigest?: string } = {}): Promise<FileInfo> {
    const info = await this.getFile(id);
    const wanted: Record<string, string> = { blake3: info.digests.blake3, sha256: info.digests.sha256 };
    if (o.expectedDigest) {
      const [algorithm, hex] = o.expectedDigest.split(":");
      if (!(algorithm in wanted)) throw new Error(`expectedDigest must be blake3:<hex> or sha256:<hex>`);
      if (hex.toLowerCase() !== wanted[algorithm]) {
        throw new DigestMismatch(`file ${id} is ${algorithm}:${wanted[algorithm]}, not ${o.expectedDigest}`);
      }
    }
    const scratch = await mkdtemp(join(dirname(destination), `.${basename(destination)}.`));
    const partial = join(scratch, "partial");
    try {
      const response = await this.request("GET", `/files/${checkedId(id)}/download`);
      const b3 = blake3.create();
      const sha = createHash("sha256");
      const out = await open(partial, "wx", 0o666);
      try {
        for await (const chunk of response.body!) {
          b3.update(chunk);
          sha.update(chunk);
          await out.write(chunk);
        }
        await out.sync();
      } finally {
        await out.close();
      }
      const actual: Record<string, string> = { blake3: bytesToHex(b3.digest()), sha256: sha.digest("hex") };
      for (const algorithm of ["blake3", "sha256"]) {
        if (actual[algorithm] !== wanted[algorithm]) {
          throw new DigestMismatch(`file ${id}: received ${algorithm}:${actual[algorithm]}, the server records ${wanted[algorithm]}`);
        }
      }
      await rename(partial, destination);
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
    return info;
  }

  // Events

  /** The tenant's events after `since`, in order. With `follow` (the default), waits for new
   * ones forever (long-polls of `wait` seconds); without, stops at the end of the log. `types`
   * is a type prefix such as `v1.package.`. */
  async *events(since = 0, o: { types?: string; follow?: boolean; wait?: number; pageSize?: number } = {}): AsyncGenerator<StoredEvent> {
    const follow = o.follow ?? true;
    for (;;) {
      const query = new URLSearchParams({
        since: String(since),
        limit: String(o.pageSize ?? 1000),
        wait: String(follow ? (o.wait ?? 30) : 0),
      });
      if (o.types) query.set("type", o.types);
      const response = await this.request("GET", "/events", { query, headers: { Accept: "application/json" } });
      const page = (await response.json()) as components["schemas"]["EventPage"];
      yield* page.events;
      since = page.next_since;
      if (!follow && page.events.length === 0) return;
    }
  }
}

// What the upload engine's tests share (engine.test.ts, batch.test.ts): the real gateway of
// test/gateway-setup.ts reached by the real fetch with the clinician's token, every chunk
// request recorded with its answer; the studies of test/global-setup.ts read as the upload page
// reads them. Faults (a cut network, a gateway answering 503) are injected around the fetch.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createSHA256 } from "hash-wasm";
import { inject } from "vitest";
import { readFileHeader } from "../src/features/upload/dicom-header";
import type { ChunkPut } from "../src/features/upload/engine";
import { groupByStudy, type PickedFile, type StudyCandidate } from "../src/features/upload/group";

export const gateway = inject("gateway");
const dicomDir = inject("dicomDir");
const CHUNK = /\/uploads\/[0-9a-f-]+\/files\/(\d+)\/chunks\/(\d+)$/;
export const BATCH = /\/uploads\/([0-9a-f-]+)\/chunks:batch$/;

export async function sha256(blob: Blob): Promise<string> {
  const hasher = await createSHA256();
  hasher.update(new Uint8Array(await blob.arrayBuffer()));
  return hasher.digest("hex");
}

/** A study of test/global-setup.ts, as the upload page groups it. */
export async function study(name: string): Promise<StudyCandidate> {
  const root = join(dicomDir, name);
  const picked: PickedFile[] = readdirSync(root).map((f) => ({ file: new File([readFileSync(join(root, f))], f), name: f }));
  const results = await Promise.all(picked.map(async (p) => ({ picked: p, result: await readFileHeader(p.file) })));
  const [candidate] = groupByStudy(results).studies;
  return candidate!;
}

/** A chunk batch's body read back by the test's own reading of the framing (docs/api.md). */
export interface ReadBatch {
  parts: { file_index: number; chunk_index: number; size: number; sha256: string }[];
  /** "file/chunk" of each part, in order. */
  keys: string[];
  /** Where the first part's bytes start in the body. */
  dataStart: number;
}

export function readBatch(body: ArrayBuffer): ReadBatch {
  const length = new DataView(body).getUint32(0, false);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(body, 4, length))) as Pick<ReadBatch, "parts">;
  return { parts: header.parts, keys: header.parts.map((p) => `${p.file_index}/${p.chunk_index}`), dataStart: 4 + length };
}

/** A chunk batch the engine sent, and the gateway's answer. */
export interface SentBatch {
  uploadId: string;
  keys: string[];
  bytes: number;
  status: number;
  /** Each part's status in the answer (empty unless 200). */
  statuses: string[];
}

/** The real fetch with the clinician's token, recording every chunk PUT and batch with their
 * answers. */
export class Network {
  puts: { key: string; status: number }[] = [];
  batches: SentBatch[] = [];
  /** The bodies of POST /uploads (the manifests, with the chunk size asked for). */
  manifests: { chunk_size?: number }[] = [];
  /** Milliseconds each liveness probe (the round trip the engine times) is held back. */
  probeDelay = 0;
  online = true;
  /** Fault injection: called before each request; may answer in the gateway's place, or
   * throw (a link that dropped while the browser still says it is online). */
  fault: ((request: Request) => Response | null | Promise<Response | null>) | null = null;

  fetch = async (request: Request): Promise<Response> => {
    if (!this.online) throw new TypeError("Failed to fetch");
    const injected = (await this.fault?.(request)) ?? null;
    if (injected) return injected;
    return this.forward(request);
  };

  /** The request to the gateway, past the fault (a fault may send one it changed). */
  forward = async (request: Request): Promise<Response> => {
    const path = new URL(request.url).pathname;
    if (request.method === "POST" && path === "/api/v1/uploads") {
      this.manifests.push((await request.clone().json()) as { chunk_size?: number });
    }
    const batch = request.method === "POST" ? BATCH.exec(path) : null;
    const sent = batch ? await request.clone().arrayBuffer() : null;
    if (path === "/health/live" && this.probeDelay) await new Promise((resolve) => setTimeout(resolve, this.probeDelay));
    const headers = new Headers(request.headers);
    headers.set("Authorization", `Bearer ${gateway.token}`);
    const response = await fetch(new Request(request, { headers }));
    const chunk = CHUNK.exec(path);
    if (request.method === "PUT" && chunk) this.puts.push({ key: `${chunk[1]}/${chunk[2]}`, status: response.status });
    if (batch && sent) {
      const answer = response.status === 200 ? ((await response.clone().json()) as { parts: { status: string }[] }) : null;
      this.batches.push({
        uploadId: batch[1]!,
        keys: readBatch(sent).keys,
        bytes: sent.byteLength,
        status: response.status,
        statuses: answer?.parts.map((p) => p.status) ?? [],
      });
    }
    return response;
  };

  /** Every chunk the gateway acknowledged ("file/chunk"): by a PUT, or as a part of a batch. */
  acknowledged(): string[] {
    const parts = this.batches.flatMap((b) => b.keys.filter((_, i) => b.statuses[i] === "stored" || b.statuses[i] === "already_stored"));
    return [...this.puts.filter((p) => p.status === 200).map((p) => p.key), ...parts];
  }

  /** A chunk request for EngineDeps.putChunk through this network; progress only at the answer. */
  put = async (put: ChunkPut): Promise<Response> => {
    const response = await this.fetch(new Request(put.url, { method: put.method ?? "PUT", body: put.body, headers: put.headers, signal: put.signal }));
    put.progress();
    return response;
  };
}

/** A request on a link that silently stopped: nothing moves, no error, until it is aborted. */
export function hang(put: ChunkPut): Promise<Response> {
  return new Promise((_, reject) => put.signal.addEventListener("abort", () => reject(put.signal.reason as Error), { once: true }));
}

export async function serverUpload(id: string): Promise<{ status: string; received_bytes: number; total_bytes: number }> {
  const response = await fetch(`${gateway.url}/api/v1/uploads/${id}?files=false`, { headers: { Authorization: `Bearer ${gateway.token}` } });
  return (await response.json()) as { status: string; received_bytes: number; total_bytes: number };
}

/** The gateway's record of each file of an upload: its SHA-256 and status. */
export async function serverFiles(id: string): Promise<{ index: number; sha256: string; status: string }[]> {
  const response = await fetch(`${gateway.url}/api/v1/uploads/${id}`, { headers: { Authorization: `Bearer ${gateway.token}` } });
  return ((await response.json()) as { files: { index: number; sha256: string; status: string }[] }).files;
}

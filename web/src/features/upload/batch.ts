// Chunk batches (docs/api.md, "Chunk batch"): whole small files several per request,
// `POST /uploads/{id}/chunks:batch`, as the CLI sends them (relaypacs/client/engine.py). The
// gateway's cost per request (HTTP, authentication, the policy, a storage put with its fsyncs,
// a database row) outweighs its cost per byte for a CT slice of 0.5 MB; a batch pays it once.
//
// The framing (relaypacs/uploads/batches.py):
//
//     4 bytes, big-endian: H, the header's length (1 .. 65,536)
//     H bytes: the header, JSON: {"parts": [{"file_index", "chunk_index", "size", "sha256"}]}
//     then the parts' bytes, back to back, in the header's order
//
// The gateway takes a body of up to its chunk size + 65,540 bytes; the parts of a batch carry
// at most the upload's chunk size (never more than the gateway's), and the header of
// BATCH_PARTS parts is far under 64 KiB.
import type { QueuedFile } from "../../lib/db";
import { WHOLE_FILE_MAX } from "./link";

export const BATCH_MEDIA_TYPE = "application/vnd.relaypacs.chunk-batch";
/** The parts' bytes of one batch at most, by default, and never more than the upload's chunk
 * size: the CLI's `--batch-size` (with 8 MiB batches the gateway's peak memory rose by 40 MiB
 * for no steady gain, bench/README.md "Chunk batches"). */
export const BATCH_BYTES = 2 << 20;
/** A file goes in a batch when it is one chunk of at most this size (link.ts never splits it). */
export const BATCH_FILE_MAX = WHOLE_FILE_MAX;
/** Parts in one batch at most (the gateway takes 256: one group commit of its rows). */
export const BATCH_PARTS = 128;
/** The gateway's limit on the header. */
export const MAX_HEADER = 64 * 1024;

/** One chunk to send: chunk `chunk` of `file`, which has `count` chunks. */
export interface ChunkTask {
  file: QueuedFile;
  chunk: number;
  count: number;
}

/** A request of the upload: one chunk PUT, or whole files in one chunk batch. */
export type ChunkRequest = { batch: false; task: ChunkTask } | { batch: true; tasks: ChunkTask[] };

/** One part of a batch: its bytes and the hex SHA-256 its header declares. */
export interface BatchPart {
  fileIndex: number;
  chunkIndex: number;
  sha256: string;
  data: ArrayBuffer;
}

/** The gateway's answer for one part (ChunkPartResult). */
export interface PartAnswer {
  file_index: number;
  chunk_index: number;
  size: number;
  status: "stored" | "already_stored" | "refused";
  code: string | null;
  message: string | null;
}

/** Whether `task` goes in a batch: a whole file of at most BATCH_FILE_MAX that fits `budget`. */
export function batchable(task: ChunkTask, budget: number): boolean {
  return task.count === 1 && task.chunk === 0 && task.file.size <= BATCH_FILE_MAX && task.file.size <= budget;
}

/**
 * The requests to send `tasks` in, in their order: whole small files together (a batch of up
 * to `budget` bytes of parts and BATCH_PARTS parts; `budget` 0: no batches), the other chunks
 * one by one. A batch of one part is still a batch (its answer says the same as a PUT's).
 */
export function planRequests(tasks: ChunkTask[], budget: number): ChunkRequest[] {
  const requests: ChunkRequest[] = [];
  let batch: ChunkTask[] = [];
  let bytes = 0;
  for (const task of tasks) {
    if (budget <= 0 || !batchable(task, budget)) {
      requests.push({ batch: false, task });
      continue;
    }
    if (batch.length > 0 && (bytes + task.file.size > budget || batch.length >= BATCH_PARTS)) {
      requests.push({ batch: true, tasks: batch });
      batch = [];
      bytes = 0;
    }
    batch.push(task);
    bytes += task.file.size;
  }
  if (batch.length > 0) requests.push({ batch: true, tasks: batch });
  return requests;
}

/** The body of a chunk batch holding `parts`, in their order. */
export function batchBody(parts: BatchPart[]): ArrayBuffer {
  const header = new TextEncoder().encode(
    JSON.stringify({
      parts: parts.map((p) => ({ file_index: p.fileIndex, chunk_index: p.chunkIndex, size: p.data.byteLength, sha256: p.sha256 })),
    }),
  );
  if (header.length < 1 || header.length > MAX_HEADER) throw new Error(`A chunk batch's header must be 1 to ${MAX_HEADER} bytes.`);
  const total = parts.reduce((sum, p) => sum + p.data.byteLength, 4 + header.length);
  const body = new Uint8Array(total);
  new DataView(body.buffer).setUint32(0, header.length, false);
  body.set(header, 4);
  let at = 4 + header.length;
  for (const part of parts) {
    body.set(new Uint8Array(part.data), at);
    at += part.data.byteLength;
  }
  return body.buffer;
}

/** The gateway's answers to a batch of `parts`: one per part, in order; an error if the
 * answer is not that. */
export function partAnswers(answer: unknown, parts: BatchPart[]): PartAnswer[] {
  const items = (answer as { parts?: unknown } | null)?.parts;
  if (!Array.isArray(items) || items.length !== parts.length) {
    throw new Error("The gateway's answer to a group of files sent together does not list every file.");
  }
  return items.map((item: PartAnswer, i) => {
    const part = parts[i]!;
    if (item.file_index !== part.fileIndex || item.chunk_index !== part.chunkIndex) {
      throw new Error("The gateway's answer to a group of files sent together lists another file.");
    }
    return item;
  });
}

// Chunk batches: the framing byte for byte, the plan of requests, and the engine sending whole
// small files in batches to the real gateway (test/gateway-setup.ts: 64 KiB chunks, so a batch
// carries at most 64 KiB of parts), which parses every body the engine builds; each part's own
// answer (stored, refused for its digest or as a conflict), an older gateway without the route,
// and the waits of a gateway that does not answer. Faults are injected around the real fetch.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { QueueDatabase, type QueuedFile } from "../../lib/db";
import { ApiError, describeError } from "../../lib/api/errors";
import { BATCH_PARTS, batchBody, partAnswers, planRequests, type ChunkTask } from "./batch";
import { UploadEngine, waitingNote, type EngineDeps } from "./engine";
import { enqueueStudy, studyFiles } from "./queue";
import { BATCH, Network, gateway, hang, readBatch, serverFiles, serverUpload, sha256, study } from "../../../test/engine-harness";

const CHUNK_SIZE = 64 * 1024; // the test gateway's
const FILES = 24; // in each small{n} study
const EVERY_FILE = Array.from({ length: FILES }, (_, i) => `${i}/0`).sort();

function bytes(...values: number[]): ArrayBuffer {
  return Uint8Array.from(values).buffer;
}

describe("the chunk batch framing", () => {
  it("is the header's length in 4 bytes big-endian, the JSON header, then the parts back to back", () => {
    const body = batchBody([
      { fileIndex: 3, chunkIndex: 0, sha256: "ab".repeat(32), data: bytes(1, 2, 3) },
      { fileIndex: 7, chunkIndex: 0, sha256: "cd".repeat(32), data: bytes(9, 8) },
    ]);
    const header =
      `{"parts":[{"file_index":3,"chunk_index":0,"size":3,"sha256":"${"ab".repeat(32)}"},` +
      `{"file_index":7,"chunk_index":0,"size":2,"sha256":"${"cd".repeat(32)}"}]}`;
    expect(header.length).toBe(247);
    const expected = [0, 0, 0, 247, ...new TextEncoder().encode(header), 1, 2, 3, 9, 8];
    expect([...new Uint8Array(body)]).toEqual(expected);
  });

  it("writes a header longer than 255 bytes across the length's bytes", () => {
    const parts = Array.from({ length: 40 }, (_, i) => ({ fileIndex: i, chunkIndex: 0, sha256: "0".repeat(64), data: bytes(i) }));
    const body = new Uint8Array(batchBody(parts));
    const length = (body[0]! << 24) | (body[1]! << 16) | (body[2]! << 8) | body[3]!;
    expect(length).toBeGreaterThan(0xff);
    expect(body[2]).toBeGreaterThan(0);
    expect(body.length).toBe(4 + length + 40);
    expect(JSON.parse(new TextDecoder().decode(body.subarray(4, 4 + length))).parts).toHaveLength(40);
    expect([...body.subarray(4 + length)]).toEqual(parts.map((_, i) => i));
  });

  it("takes an answer that lists every part in order, and no other", () => {
    const parts = [
      { fileIndex: 1, chunkIndex: 0, sha256: "0".repeat(64), data: bytes(1) },
      { fileIndex: 2, chunkIndex: 0, sha256: "0".repeat(64), data: bytes(2) },
    ];
    const item = (file_index: number, status: string) => ({ file_index, chunk_index: 0, size: 1, status, code: null, message: null });
    expect(partAnswers({ parts: [item(1, "stored"), item(2, "already_stored")] }, parts).map((a) => a.status)).toEqual(["stored", "already_stored"]);
    expect(() => partAnswers({ parts: [item(1, "stored")] }, parts)).toThrow();
    expect(() => partAnswers({ parts: [item(2, "stored"), item(1, "stored")] }, parts)).toThrow();
    expect(() => partAnswers(null, parts)).toThrow();
  });
});

describe("the plan of an upload's requests", () => {
  const file = (index: number, size: number) => ({ index, size }) as QueuedFile;
  const task = (index: number, size: number, chunk = 0, count = 1): ChunkTask => ({ file: file(index, size), chunk, count });
  const shape = (tasks: ChunkTask[], budget: number) =>
    planRequests(tasks, budget).map((r) => (r.batch ? r.tasks.map((t) => t.file.index) : `${r.task.file.index}/${r.task.chunk}`));

  it("groups whole small files up to the budget, in file order, and sends the other chunks alone", () => {
    const tasks = [task(0, 400), task(1, 300), task(2, 5000, 0, 2), task(3, 400), task(4, 200), task(2, 5000, 1, 2), task(5, 900)];
    // A batch goes once full (or at the end): the chunks of a split file do not wait for it.
    expect(shape(tasks, 1000)).toEqual(["2/0", [0, 1], "2/1", [3, 4], [5]]);
  });

  it("sends a file over 1 MiB alone even when one chunk, and nothing in batches with no budget", () => {
    const big = task(0, (1 << 20) + 1);
    expect(shape([big, task(1, 10)], 8 << 20)).toEqual(["0/0", [1]]);
    expect(shape([task(0, 10), task(1, 10)], 0)).toEqual(["0/0", "1/0"]);
  });

  it("puts at most BATCH_PARTS parts in one batch", () => {
    const tasks = Array.from({ length: BATCH_PARTS + 5 }, (_, i) => task(i, 1));
    expect(planRequests(tasks, 1 << 20).map((r) => (r.batch ? r.tasks.length : 0))).toEqual([BATCH_PARTS, 5]);
  });
});

let db: QueueDatabase;
let network: Network;

function engine(overrides: Partial<EngineDeps> = {}): UploadEngine {
  return new UploadEngine({
    db,
    fetch: network.fetch,
    hash: sha256,
    online: () => network.online,
    baseUrl: gateway.url,
    retryDelays: [10, 20, 40],
    ...overrides,
  });
}

/** The upload is validated by the gateway, every file's SHA-256 the one hashed on the device. */
async function arrivedWhole(studyId: string, uploadId: string): Promise<void> {
  const upload = await serverUpload(uploadId);
  expect(upload.status).toBe("validated");
  expect(upload.received_bytes).toBe(upload.total_bytes);
  const local = (await studyFiles(db, studyId)).map((f) => [f.index, f.sha256]);
  const remote = (await serverFiles(uploadId)).map((f) => [f.index, f.sha256]);
  expect(remote.sort()).toEqual(local.sort());
  expect((await serverFiles(uploadId)).every((f) => f.status === "valid")).toBe(true);
}

function pathOf(request: Request): string {
  return new URL(request.url).pathname;
}

beforeEach(() => {
  db = new QueueDatabase(`batch-${crypto.randomUUID()}`);
  network = new Network();
});
afterEach(async () => {
  await db.delete();
});

describe("the upload engine with chunk batches", () => {
  it("sends whole small files several per request, each acknowledged once, and the study validates", async () => {
    const candidate = await study("small0");
    const id = await enqueueStudy(db, candidate, { estimate: async () => ({}) });
    const uploader = engine();
    const seen: number[] = [];
    uploader.subscribe(() => {
      const progress = uploader.progressOf(id);
      if (progress) seen.push(progress.sentBytes);
    });
    uploader.kick();
    await uploader.idle();

    const sent = (await db.studies.get(id))!;
    expect(sent).toMatchObject({ state: "sent", note: null, sentBytes: candidate.totalBytes });
    expect(network.puts).toEqual([]);
    expect(network.batches.length).toBeGreaterThan(1);
    expect(network.batches.length).toBeLessThanOrEqual(Math.ceil(FILES / 2));
    for (const batch of network.batches) {
      expect(batch.status).toBe(200);
      expect(batch.statuses.every((s) => s === "stored")).toBe(true);
      // Within the gateway's limit: the parts carry at most the upload's chunk size.
      expect(batch.bytes).toBeLessThanOrEqual(CHUNK_SIZE + 4 + 64 * 1024);
    }
    expect(network.acknowledged().sort()).toEqual(EVERY_FILE);
    // The progress moved batch by batch, never backwards.
    expect(new Set(seen).size).toBeGreaterThanOrEqual(network.batches.length);
    expect(seen).toEqual([...seen].sort((a, b) => a - b));
    await arrivedWhole(id, sent.uploadId!);
  });

  it("sends a part refused for its digest again alone, and none of the parts stored with it", async () => {
    const id = await enqueueStudy(db, await study("small1"), { estimate: async () => ({}) });
    let damaged: string | null = null;
    let once = false;
    network.fault = async (request) => {
      if (once || !BATCH.test(pathOf(request))) return null;
      once = true; // before any await: the lanes' batches come at once
      // The first part's first byte damaged on the way: its bytes are not its SHA-256's.
      const body = new Uint8Array(await request.clone().arrayBuffer());
      const sent = readBatch(body.buffer);
      damaged = sent.keys[0]!;
      body[sent.dataStart] = body[sent.dataStart]! ^ 0xff;
      return network.forward(new Request(request, { body }));
    };
    const uploader = engine();
    uploader.kick();
    await uploader.idle();

    const sent = (await db.studies.get(id))!;
    expect(sent.state).toBe("sent");
    // (Recorded as answered: the lanes' batches answer in any order.)
    const first = network.batches.find((b) => b.keys[0] === damaged)!;
    expect(first.statuses[0]).toBe("refused");
    expect(first.statuses.slice(1).every((s) => s === "stored")).toBe(true);
    expect(network.batches.filter((b) => b.keys.includes(damaged!))).toEqual([first]);
    // Only the refused part went again, alone.
    expect(network.puts).toEqual([{ key: damaged, status: 200 }]);
    expect(network.acknowledged().sort()).toEqual(EVERY_FILE);
    await arrivedWhole(id, sent.uploadId!);
  });

  it("fails the study on a part refused as a conflict, as a chunk PUT's 409 does, the other parts stored", async () => {
    const id = await enqueueStudy(db, await study("small2"), { estimate: async () => ({}) });
    let conflicted: string | null = null;
    let once = false;
    network.fault = async (request) => {
      const batch = BATCH.exec(pathOf(request));
      if (once || !batch) return null;
      once = true; // before any await
      // Another device stored other bytes under the second part's chunk first.
      const part = readBatch(await request.clone().arrayBuffer()).parts[1]!;
      conflicted = `${part.file_index}/${part.chunk_index}`;
      const other = new Uint8Array(part.size).fill(7);
      const digest = btoa(String.fromCharCode(...new Uint8Array(await crypto.subtle.digest("SHA-256", other))));
      const stored = await fetch(`${gateway.url}/api/v1/uploads/${batch[1]}/files/${part.file_index}/chunks/${part.chunk_index}`, {
        method: "PUT",
        body: other,
        headers: { Authorization: `Bearer ${gateway.token}`, "Content-Type": "application/octet-stream", "Content-Digest": `sha-256=:${digest}:` },
      });
      expect(stored.status).toBe(200);
      return null;
    };
    const uploader = engine({ parallel: 1 });
    uploader.kick();
    await uploader.idle();

    const failed = (await db.studies.get(id))!;
    expect(failed).toMatchObject({ state: "failed", note: describeError(new ApiError(409, "chunk_conflict", "")) });
    expect(failed.note).toBe("A part of a file changed since it was first sent. Choose the files again.");
    const first = network.batches[0]!;
    expect(first.keys[1]).toBe(conflicted);
    expect(first.statuses[1]).toBe("refused");
    expect(first.statuses.filter((s, i) => i !== 1 && s === "stored")).toHaveLength(first.keys.length - 1);
    expect(network.puts).toEqual([]); // not sent again: it would be refused again
    expect(network.batches).toHaveLength(1); // one lane: nothing more after the failure
  });

  for (const [status, code, name] of [
    [404, "not_found", "small3"],
    [405, "method_not_allowed", "small4"],
    [413, "chunk_batch_too_large", "small8"],
  ] as const) {
    it(`sends single chunks to a gateway that takes no chunk batches (${status} ${code})`, async () => {
      const id = await enqueueStudy(db, await study(name), { estimate: async () => ({}) });
      let refused = 0;
      network.fault = (request) => {
        if (!BATCH.test(pathOf(request))) return null;
        refused += 1;
        return Response.json({ error: { code, message: "no such route" } }, { status });
      };
      const uploader = engine({ parallel: 4 });
      uploader.kick();
      await uploader.idle();

      const sent = (await db.studies.get(id))!;
      expect(sent.state).toBe("sent");
      // Asked once per lane at most (the lanes that started a batch before the first answer).
      expect(refused).toBeGreaterThanOrEqual(1);
      expect(refused).toBeLessThanOrEqual(4);
      expect(network.puts.map((p) => p.key).sort()).toEqual(EVERY_FILE);
      expect(network.puts.every((p) => p.status === 200)).toBe(true);
      await arrivedWhole(id, sent.uploadId!);
    });
  }

  it("waits, never fails, while the gateway answers batches 503, then completes with each part once", async () => {
    const id = await enqueueStudy(db, await study("small5"), { estimate: async () => ({}) });
    const uploader = engine({ maxRetryDelay: 40 });
    let refusals = 0;
    let during: { state: string; note: string | null } | undefined;
    network.fault = async (request) => {
      if (!BATCH.test(pathOf(request)) || refusals >= 20) return null;
      refusals += 1;
      if (refusals === 20) during = await db.studies.get(id);
      return Response.json({ error: { code: "storage_unavailable", message: "down" } }, { status: 503, headers: { "Retry-After": "0" } });
    };
    uploader.kick();
    await uploader.idle();

    expect(refusals).toBe(20);
    expect(during).toMatchObject({ state: "waiting", note: waitingNote(new ApiError(503, "storage_unavailable", "down")) });
    const sent = (await db.studies.get(id))!;
    expect(sent).toMatchObject({ state: "sent", note: null });
    expect(network.puts).toEqual([]);
    expect(network.acknowledged().sort()).toEqual(EVERY_FILE);
    await arrivedWhole(id, sent.uploadId!);
  });

  it("gives up a batch that makes no progress and sends it again", async () => {
    const id = await enqueueStudy(db, await study("small6"), { estimate: async () => ({}) });
    let stalled = 0;
    const uploader = engine({
      stallTimeout: 1_000,
      requestTimeout: 5_000,
      // The first batch goes out on a link that silently stopped.
      putChunk: (put) => (put.method === "POST" && stalled++ < 1 ? hang(put) : network.put(put)),
    });
    uploader.kick();
    await uploader.idle();

    expect(uploader.stalls).toBe(1);
    const sent = (await db.studies.get(id))!;
    expect(sent.state).toBe("sent");
    expect(network.puts).toEqual([]);
    // Every part acknowledged once: the stalled batch never reached the gateway.
    expect(network.acknowledged().sort()).toEqual(EVERY_FILE);
    await arrivedWhole(id, sent.uploadId!);
  });

  it("sends one file per request with no batch budget", async () => {
    const id = await enqueueStudy(db, await study("small7"), { estimate: async () => ({}) });
    const uploader = engine({ batchBytes: 0 });
    uploader.kick();
    await uploader.idle();
    const sent = (await db.studies.get(id))!;
    expect(sent.state).toBe("sent");
    expect(network.batches).toEqual([]);
    expect(network.puts.map((p) => p.key).sort()).toEqual(EVERY_FILE);
  });
});

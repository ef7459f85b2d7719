// The upload engine against a real gateway (test/gateway-setup.ts) with the real chunk
// protocol; IndexedDB is fake-indexeddb. Faults (a cut network, a gateway answering 503) are
// injected around the real fetch (test/engine-harness.ts). These studies' files are 3 chunks
// each: no chunk batches here (batch.test.ts).
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { QueueDatabase } from "../../lib/db";
import { UploadEngine, isTransient, waitingNote, type EngineDeps } from "./engine";
import { FIRST_GUESS, LinkMeter, MIN_CHUNK } from "./link";
import { enqueueStudy, studyFiles } from "./queue";
import { Network, gateway, hang, serverUpload, sha256, study } from "../../../test/engine-harness";

const EVERY_CHUNK = ["0/0", "0/1", "0/2", "1/0", "1/1", "1/2", "2/0", "2/1", "2/2", "3/0", "3/1", "3/2"];

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

beforeEach(() => {
  db = new QueueDatabase(`engine-${crypto.randomUUID()}`);
  network = new Network();
});
afterEach(async () => {
  await db.delete();
});

describe("the upload engine", () => {
  it("sends every chunk once with its digest, completes, and drops the files from the device", async () => {
    const candidate = await study("multi0");
    const id = await enqueueStudy(db, candidate, { estimate: async () => ({}) });
    const uploader = engine();
    uploader.kick();
    await uploader.idle();

    const queued = (await db.studies.get(id))!;
    expect(queued).toMatchObject({ state: "sent", note: null, sentBytes: candidate.totalBytes });
    expect(network.acknowledged().sort()).toEqual(
      ["0/0", "0/1", "0/2", "1/0", "1/1", "1/2", "2/0", "2/1", "2/2", "3/0", "3/1", "3/2"],
    );
    expect(network.puts).toHaveLength(12);
    expect((await studyFiles(db, id)).every((f) => f.blob === null && f.sha256?.length === 64)).toBe(true);
    const upload = await serverUpload(queued.uploadId!);
    expect(upload.status).toBe("validated"); // no PACS configured: kept, verified
    expect(upload.received_bytes).toBe(upload.total_bytes);
  });

  it("pauses when the network goes, and after a reload resumes without re-sending an acknowledged chunk", async () => {
    const candidate = await study("multi1");
    const id = await enqueueStudy(db, candidate, { estimate: async () => ({}) });
    const first = engine({ parallel: 2 });
    // The network goes after the 5th acknowledged chunk.
    network.fault = () => {
      if (network.acknowledged().length >= 5 && network.online) {
        network.online = false;
        first.stopAll();
      }
      return null;
    };
    first.kick();
    await first.idle();
    const paused = (await db.studies.get(id))!;
    expect(paused.state).toBe("paused");
    expect(paused.note).toMatch(/Waiting for the network/);
    const before = network.acknowledged();
    expect(before.length).toBeGreaterThanOrEqual(5);
    expect(before.length).toBeLessThan(12);

    // A reload: a new engine on the same database, the network back.
    network.fault = null;
    network.online = true;
    const reopened = new QueueDatabase(db.name);
    const second = engine({ db: reopened });
    second.kick();
    await second.idle();
    const sent = (await reopened.studies.get(id))!;
    expect(sent.state).toBe("sent");
    const after = network.acknowledged().slice(before.length);
    expect(after.filter((key) => before.includes(key))).toEqual([]);
    // (A chunk in flight when the network went may have reached the gateway unacknowledged:
    // the gateway's record says so, and it is not sent again either.)
    expect(before.length + after.length).toBeLessThanOrEqual(12);
    const upload = await serverUpload(sent.uploadId!);
    expect(upload.received_bytes).toBe(upload.total_bytes);
    expect(upload.status).toBe("validated");
    reopened.close();
  });

  it("retries what the gateway refuses for now (503) and gets there", async () => {
    const candidate = await study("multi2");
    const id = await enqueueStudy(db, candidate, { estimate: async () => ({}) });
    let refusals = 0;
    network.fault = (request) => {
      if (request.method === "PUT" && refusals < 3) {
        refusals += 1;
        return Response.json({ error: { code: "storage_unavailable", message: "down" } }, { status: 503 });
      }
      return null;
    };
    const uploader = engine();
    uploader.kick();
    await uploader.idle();
    expect(refusals).toBe(3);
    expect((await db.studies.get(id))!.state).toBe("sent");
  });

  it("recognises a study the gateway already has before any byte moves", async () => {
    const candidate = await study("multi0"); // sent by the first test
    const id = await enqueueStudy(db, candidate, { estimate: async () => ({}) });
    const uploader = engine();
    uploader.kick();
    await uploader.idle();
    expect(await db.studies.get(id)).toMatchObject({ state: "already_sent", sentBytes: candidate.totalBytes });
    expect(network.puts).toEqual([]);
    expect((await studyFiles(db, id)).every((f) => f.blob === null)).toBe(true);
  });

  it("pauses, not fails, when the session ends, and goes on after the next sign-in", async () => {
    const candidate = await study("multi1"); // sent by an earlier test: recognised at once
    const id = await enqueueStudy(db, candidate, { estimate: async () => ({}) });
    network.fault = () => Response.json({ error: { code: "session_ended", message: "ended" } }, { status: 401 });
    const uploader = engine();
    uploader.kick();
    await uploader.idle();
    expect(await db.studies.get(id)).toMatchObject({ state: "paused", note: "Sign in again to go on with this upload." });
    network.fault = null; // signed in again
    uploader.kick();
    await uploader.idle();
    expect((await db.studies.get(id))!.state).toBe("already_sent");
  });

  it("pauses a study when asked (chunks in flight stopped) and resumes it when asked", async () => {
    const candidate = await study("multi3");
    const id = await enqueueStudy(db, candidate, { estimate: async () => ({}) });
    const uploader = engine({ parallel: 1 });
    network.fault = () => {
      if (network.acknowledged().length === 3) void uploader.pause(id);
      return null;
    };
    uploader.kick();
    await uploader.idle();
    const paused = (await db.studies.get(id))!;
    expect(paused).toMatchObject({ state: "paused", pausedByUser: true });
    const before = network.acknowledged();
    expect(before.length).toBeLessThan(12);
    uploader.kick(); // paused by the clinician: the engine leaves it alone
    await uploader.idle();
    expect(network.acknowledged()).toEqual(before);
    network.fault = null;
    await uploader.resume(id);
    await uploader.idle();
    expect((await db.studies.get(id))!.state).toBe("sent");
    expect(network.acknowledged().slice(before.length).filter((k) => before.includes(k))).toEqual([]);
  });

  it("cancels a started study at the gateway too and drops its files", async () => {
    const candidate = await study("multi4");
    const id = await enqueueStudy(db, candidate, { estimate: async () => ({}) });
    const uploader = engine({ parallel: 1 });
    network.fault = () => {
      if (network.acknowledged().length === 2) {
        network.fault = null;
        void uploader.pause(id);
      }
      return null;
    };
    uploader.kick();
    await uploader.idle();
    await uploader.cancel(id);
    const cancelled = (await db.studies.get(id))!;
    expect(cancelled.state).toBe("cancelled");
    expect((await serverUpload(cancelled.uploadId!)).status).toBe("cancelled");
    expect((await studyFiles(db, id)).every((f) => f.blob === null)).toBe(true);
  });

  it("asks for no chunk size on a local network, for a small one further away, then for one fitted to the measured rate", async () => {
    // A local gateway (round trip well under 20 ms): the server's own size.
    const near = await study("multi5");
    await enqueueStudy(db, near, { estimate: async () => ({}) });
    const local = engine();
    local.kick();
    await local.idle();
    expect(network.manifests).toHaveLength(1);
    expect(network.manifests[0]!.chunk_size).toBeUndefined();
    expect(local.link.rtt).toBeLessThan(20);

    // A gateway 30 ms away (the probe held back): the first guess, as the CLI asks; the
    // study's files (130 kB) stay whole within it. This gateway grants at most 64 KiB.
    network.probeDelay = 30;
    const far = await study("multi6");
    const id = await enqueueStudy(db, far, { estimate: async () => ({}) });
    const remote = engine();
    remote.kick();
    await remote.idle();
    expect(remote.link.rtt).toBeGreaterThanOrEqual(20);
    expect(network.manifests[1]!.chunk_size).toBe(FIRST_GUESS);
    const sent = (await db.studies.get(id))!;
    expect(sent.state).toBe("sent");
    expect((await serverUpload(sent.uploadId!)).status).toBe("validated");

    // Once a rate is measured, it decides: a slow link (2 MB over 4 s: 0.5 MB/s, 6 in flight:
    // 43 kB each) asks for the least, raised so that no file of 1 MiB or less is split.
    let now = 0;
    const meter = new LinkMeter(() => now);
    meter.rtt = 100;
    meter.started();
    now = 4000;
    meter.finished(2 << 20);
    const slow = engine({ link: meter });
    // (The largest file of the study sent, not of the one before: synthetic files differ by a
    // few bytes, their UIDs' lengths.)
    const next = await enqueueStudy(db, await study("multi7"), { estimate: async () => ({}) });
    const largest = Math.max(...(await studyFiles(db, next)).map((f) => f.size));
    slow.kick();
    await slow.idle();
    expect(network.manifests[2]!.chunk_size).toBe(Math.max(MIN_CHUNK, largest));
    expect(largest).toBeGreaterThan(MIN_CHUNK);
  });

  it("gives up a chunk request that makes no progress and sends it again on a new one", async () => {
    const candidate = await study("multi3"); // paused and resumed by an earlier test: sent
    await enqueueStudy(db, candidate, { estimate: async () => ({}) });
    const fresh = await study("multi4"); // cancelled by an earlier test: a new upload
    const id = await enqueueStudy(db, fresh, { estimate: async () => ({}) });
    let stalled = 0;
    const uploader = engine({
      stallTimeout: 300,
      requestTimeout: 5_000,
      // The first two chunk PUTs go out on a link that silently stopped.
      putChunk: (put) => (stalled++ < 2 ? hang(put) : network.put(put)),
    });
    uploader.kick();
    await uploader.idle();
    expect(uploader.stalls).toBe(2);
    const sent = (await db.studies.get(id))!;
    expect(sent.state).toBe("sent");
    // Every chunk acknowledged once: the stalled ones never reached the gateway.
    expect(network.acknowledged().sort()).toEqual(
      ["0/0", "0/1", "0/2", "1/0", "1/1", "1/2", "2/0", "2/1", "2/2", "3/0", "3/1", "3/2"],
    );
    const upload = await serverUpload(sent.uploadId!);
    expect(upload.received_bytes).toBe(upload.total_bytes);
    expect(upload.status).toBe("validated");
  });

  it("lets a slow chunk go on as long as it keeps moving", async () => {
    const id = await enqueueStudy(db, await study("multi8"), { estimate: async () => ({}) });
    let slowed = false;
    const slow = engine({
      parallel: 1,
      stallTimeout: 1_000,
      // The first chunk takes 3 s, its body moving every 100 ms (XHR upload progress).
      putChunk: async (put) => {
        if (!slowed) {
          slowed = true;
          for (let i = 0; i < 30; i++) {
            await new Promise((resolve) => setTimeout(resolve, 100));
            put.progress();
          }
        }
        return network.put(put);
      },
    });
    slow.kick();
    await slow.idle();
    expect(slow.stalls).toBe(0);
    expect((await db.studies.get(id))!.state).toBe("sent");
    expect(network.puts.every((p) => p.status === 200)).toBe(true);
  });

  it("stops on a refusal that is final and says why", async () => {
    const candidate = await study("flat");
    candidate.studyUid = "1.2.3.999"; // the files say another study: the gateway refuses them
    const id = await enqueueStudy(db, candidate, { estimate: async () => ({}) });
    const uploader = engine();
    uploader.kick();
    await uploader.idle();
    const failed = (await db.studies.get(id))!;
    expect(failed.state).toBe("failed");
    expect(failed.note).toBe("The gateway refused this study: no file in it could be accepted.");
  });

  it("waits, never fails, while the gateway answers 503 far longer than the quick retries, then completes", async () => {
    const id = await enqueueStudy(db, await study("multi9"), { estimate: async () => ({}) });
    const uploader = engine({ maxRetryDelay: 40 });
    // The gateway goes down (every request: chunks, complete) after 3 acknowledged chunks and
    // refuses 60 requests: 15 for each of the 4 lanes, where 4 used to fail the study.
    let refusals = 0;
    let during: { state: string; note: string | null } | undefined;
    network.fault = async () => {
      if (network.acknowledged().length < 3 || refusals >= 60) return null;
      refusals += 1;
      if (refusals === 60) during = await db.studies.get(id);
      return Response.json({ error: { code: "storage_unavailable", message: "down" } }, { status: 503, headers: { "Retry-After": "0" } });
    };
    uploader.kick();
    await uploader.idle();
    expect(refusals).toBe(60);
    expect(during).toMatchObject({
      state: "waiting",
      note: "Waiting for the gateway (The gateway's storage is unavailable right now; try again shortly.). The upload tries again by itself; nothing is lost.",
    });
    const sent = (await db.studies.get(id))!;
    expect(sent).toMatchObject({ state: "sent", note: null });
    // Every chunk acknowledged once: none was sent again after the gateway came back.
    expect(network.acknowledged().sort()).toEqual(EVERY_CHUNK);
    const upload = await serverUpload(sent.uploadId!);
    expect(upload.received_bytes).toBe(upload.total_bytes);
    expect(upload.status).toBe("validated");
  });

  it("waits through a link that drops every request while the browser says online, from the first one", async () => {
    const id = await enqueueStudy(db, await study("multi10"), { estimate: async () => ({}) });
    const uploader = engine({ maxRetryDelay: 40 });
    let drops = 0;
    let during: { state: string; note: string | null } | undefined;
    network.fault = async () => {
      if (drops >= 40) return null;
      drops += 1;
      if (drops === 40) during = await db.studies.get(id);
      throw new TypeError("Failed to fetch");
    };
    uploader.kick();
    await uploader.idle();
    expect(during).toMatchObject({ state: "waiting", note: waitingNote(new TypeError("x")) });
    expect(during!.note).toMatch(/No connection to the gateway/);
    const sent = (await db.studies.get(id))!;
    expect(sent.state).toBe("sent");
    expect(network.acknowledged().sort()).toEqual(EVERY_CHUNK);
    expect(network.puts).toHaveLength(12);
  });

  it("stops waiting at once when paused or offline, and tries at once when kicked (online)", async () => {
    const id = await enqueueStudy(db, await study("multi11"), { estimate: async () => ({}) });
    // Waits far longer than the test may last: only a pause, offline or a kick ends them.
    const uploader = engine({ retryDelays: [10], maxRetryDelay: 3_600_000 });
    let refusals = 0;
    let onWait: (() => void) | null = null;
    network.fault = async (request) => {
      if (request.method !== "PUT") return null;
      refusals += 1;
      const waiting = (await db.studies.get(id))!.state === "waiting";
      if (waiting && onWait) {
        const act = onWait;
        onWait = null;
        setTimeout(act, 20);
      }
      return Response.json({ error: { code: "database_unavailable", message: "down" } }, { status: 503 });
    };

    // Paused by the clinician while waiting.
    onWait = () => void uploader.pause(id);
    uploader.kick();
    await uploader.idle();
    expect(await db.studies.get(id)).toMatchObject({ state: "paused", pausedByUser: true });
    const afterPause = refusals;
    uploader.kick(); // left alone
    await uploader.idle();
    expect(refusals).toBe(afterPause);

    // Resumed; the browser goes offline while it waits.
    onWait = () => {
      network.online = false;
      uploader.stopAll();
    };
    await uploader.resume(id);
    await uploader.idle();
    expect(await db.studies.get(id)).toMatchObject({ state: "paused", pausedByUser: false, note: "Waiting for the network: the upload goes on by itself." });

    // Online again, the gateway still down: waiting; then it comes back and `online` kicks:
    // the hour-long waits end at once.
    network.online = true;
    onWait = () => {
      network.fault = null;
      uploader.kick();
    };
    uploader.kick();
    await uploader.idle();
    expect((await db.studies.get(id))!.state).toBe("sent");
    expect(network.acknowledged().sort()).toEqual(EVERY_CHUNK);
  });

  it("cancelled while the gateway is down: paused, not taken up again, cancelled once it is back", async () => {
    const id = await enqueueStudy(db, await study("multi12"), { estimate: async () => ({}) });
    const uploader = engine({ retryDelays: [10], maxRetryDelay: 3_600_000 });
    let cancelling: Promise<void> | null = null;
    let down = true;
    network.fault = async (request) => {
      if (!down || (request.method !== "PUT" && request.method !== "DELETE")) return null;
      if (request.method === "PUT" && cancelling === null && (await db.studies.get(id))!.state === "waiting") {
        cancelling = uploader.cancel(id);
      }
      return Response.json({ error: { code: "service_unavailable", message: "down" } }, { status: 503 });
    };
    uploader.kick();
    await uploader.idle();
    await cancelling;
    expect(await db.studies.get(id)).toMatchObject({
      state: "paused",
      pausedByUser: true,
      note: "Not cancelled: The gateway cannot do this right now; try again shortly. Paused; cancel again later.",
    });
    const puts = network.puts.length;
    uploader.kick(); // left alone
    await uploader.idle();
    expect(network.puts).toHaveLength(puts);
    down = false;
    await uploader.cancel(id);
    const cancelled = (await db.studies.get(id))!;
    expect(cancelled.state).toBe("cancelled");
    expect((await serverUpload(cancelled.uploadId!)).status).toBe("cancelled");
  });

  it("tells the answers worth waiting for from the final ones", () => {
    for (const status of [408, 429, 500, 502, 503, 504, 507]) expect(isTransient(status)).toBe(true);
    for (const status of [400, 401, 403, 404, 409, 413, 422, 501, 505]) expect(isTransient(status)).toBe(false);
  });
});

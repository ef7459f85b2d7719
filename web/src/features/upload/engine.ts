// The upload engine: the gateway's chunk protocol (docs/api.md, Uploads), as the CLI speaks it.
//
// For each queued study: hash its files (worker), POST /uploads with the manifest (the server
// answers with what it already has: a reload, another tab or another device resumes there and
// re-sends nothing it acknowledged), PUT the missing chunks a few at a time with Content-Digest
// (whole files of up to 1 MiB several per request, in chunk batches: batch.ts), then complete.
// Offline pauses everything in flight; `online` (or Background Sync, or a page load) resumes
// from the server's record.
//
// On a bad link (link.ts): each new upload asks for a chunk size fitted to the rate measured so
// far (a cut then costs about half a second of the link, not 6 x 8 MiB), and a chunk request
// that makes no progress for STALL_TIMEOUT_MS is given up and sent again (a link that silently
// stopped is noticed in seconds). In the browser the chunks go by XMLHttpRequest (xhr.ts):
// only it reports the progress of a request's body.
//
// A gateway that does not answer, or answers "not now", never fails a study: its requests go
// through a Sender (sender.ts), which retries them and shows the study "waiting" meanwhile.
import type { QueueDatabase, QueuedFile, QueuedStudy } from "../../lib/db";
import { ApiError, describeError, errorOf } from "../../lib/api/errors";
import { LinkMeter, STALL_TIMEOUT_MS, fittedChunkSize } from "./link";
import { activeStudies, finishStudy, studyFiles, updateStudy } from "./queue";
import { BATCH_BYTES, BATCH_MEDIA_TYPE, batchBody, partAnswers, planRequests, type BatchPart, type ChunkTask, type PartAnswer } from "./batch";
import { Sender, Stopped } from "./sender";

export { REQUEST_TIMEOUT_MS, isTransient, waitingNote } from "./sender";

/** One chunk request, for `EngineDeps.putChunk`: a chunk's PUT, or a chunk batch's POST. */
export interface ChunkPut {
  url: string;
  /** PUT when not given. */
  method?: "PUT" | "POST";
  body: ArrayBuffer;
  headers: Record<string, string>;
  signal: AbortSignal;
  /** To call at each sign of progress: body bytes taken by the network, the answer arriving. */
  progress: () => void;
}

export interface EngineDeps {
  db: QueueDatabase;
  /** fetch with the access token (lib/session.ts authFetch). */
  fetch: (request: Request) => Promise<Response>;
  hash: (blob: Blob) => Promise<string>;
  online: () => boolean;
  /** The gateway's origin ("" in the browser: the page's own). */
  baseUrl?: string;
  parallel?: number;
  /** The waits (ms) of the quick retries of a request; then the study is "waiting". */
  retryDelays?: number[];
  /** The longest wait (ms) between two tries while the study is waiting (30 s). */
  maxRetryDelay?: number;
  /** Sends a chunk and reports its progress (the browser: XMLHttpRequest, xhr.ts). Without
   * it, `fetch`: progress is then only the answer's arrival. */
  putChunk?: (put: ChunkPut) => Promise<Response>;
  /** A chunk request with no progress for this long (ms) is aborted and sent again. */
  stallTimeout?: number;
  /** Any other request with no answer for this long (ms) is aborted and sent again. */
  requestTimeout?: number;
  /** The link's measures to start from (a new one by default). */
  link?: LinkMeter;
  /** The chunk size to ask for: "auto" (fitted to the link, the default), or bytes. */
  chunkSize?: "auto" | number;
  /** The most bytes of whole small files in one chunk batch (BATCH_BYTES by default, never
   * more than the upload's chunk size); 0: one file per request. */
  batchBytes?: number;
}

export interface Progress {
  sentBytes: number;
  totalBytes: number;
  /** Bytes per second over the last seconds; null before there is enough to say. */
  speed: number | null;
  /** Seconds left at that speed. */
  remaining: number | null;
}

type UploadAnswer = {
  id: string;
  status: string;
  chunk_size: number;
  files: { index: number; size: number; chunk_count: number; missing_chunks: number[] }[] | null;
};

/** The 404 and 405 of a chunk batch that are the upload's, not a gateway without the route. */
const UPLOAD_ERRORS = new Set(["upload_not_found", "chunk_out_of_range"]);

/** Timing marks of the phases (bench/web_upload.py reads them); no data in their names. */
function mark(name: string): void {
  if (typeof performance !== "undefined") performance.mark(name);
}


function base64(bytes: ArrayBuffer | Uint8Array): string {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let binary = "";
  for (let i = 0; i < view.length; i += 0x8000) binary += String.fromCharCode(...view.subarray(i, i + 0x8000));
  return btoa(binary);
}

function hexToBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

export class UploadEngine {
  private running = false;
  private looping: Promise<void> = Promise.resolve();
  private again = false;
  private controller: AbortController | null = null;
  private current: string | null = null;
  private progress = new Map<string, Progress>();
  private samples = new Map<string, { at: number; bytes: number }[]>();
  private saved = new Map<string, number>();
  private listeners = new Set<() => void>();
  private readonly parallel: number;
  /** The requests of the current study, retried and waited for. */
  private readonly sender: Sender;
  private readonly api: string;
  private readonly stallTimeout: number;
  /** The goodput of this tab's chunk PUTs and the round trip to the gateway. */
  readonly link: LinkMeter;

  constructor(private readonly deps: EngineDeps) {
    this.api = `${deps.baseUrl ?? ""}/api/v1`;
    this.parallel = deps.parallel ?? 4;
    this.stallTimeout = deps.stallTimeout ?? STALL_TIMEOUT_MS;
    this.link = deps.link ?? new LinkMeter();
    this.sender = new Sender({
      db: deps.db,
      online: deps.online,
      retryDelays: deps.retryDelays,
      maxRetryDelay: deps.maxRetryDelay,
      requestTimeout: deps.requestTimeout,
      changed: () => this.emit(),
    });
  }

  /** Requests given up because they made no progress (tests and the benchmark read it). */
  get stalls(): number {
    return this.sender.stalls;
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  progressOf(studyId: string): Progress | undefined {
    return this.progress.get(studyId);
  }

  private emit(): void {
    for (const listener of this.listeners) listener();
  }

  /** Work through the queue (again). Safe to call any time: one loop runs per tab. */
  kick(): void {
    if (this.running) {
      this.again = true;
      this.wake(); // the network is back, or there is more to do: try now
      return;
    }
    this.running = true;
    this.looping = this.loop().finally(() => {
      this.running = false;
      this.emit();
    });
  }

  /** Resolves when the engine has nothing more to do for now. */
  async idle(): Promise<void> {
    while (this.running) await this.looping;
  }

  /** End the backoff waits under way: the requests waiting for the gateway are tried now. */
  wake(): void {
    this.sender.wake();
  }

  /** The network is gone: stop what is in flight; `kick` when it is back. */
  stopAll(): void {
    this.controller?.abort();
  }

  async pause(studyId: string): Promise<void> {
    await updateStudy(this.deps.db, studyId, { state: "paused", pausedByUser: true, note: null });
    if (this.current === studyId) this.controller?.abort();
    this.emit();
  }

  async resume(studyId: string): Promise<void> {
    await updateStudy(this.deps.db, studyId, { state: "queued", pausedByUser: false, note: null });
    this.kick();
  }

  async cancel(studyId: string): Promise<void> {
    const study = await this.deps.db.studies.get(studyId);
    if (!study) return;
    if (this.current === studyId) this.controller?.abort();
    if (study.uploadId) {
      const response = await this.deps.fetch(new Request(`${this.api}/uploads/${study.uploadId}`, { method: "DELETE" })).catch(() => null);
      if (response && !response.ok && response.status !== 404) {
        // Not cancelled (the gateway is down, or refuses): paused, so that it is not taken up
        // again by itself, the clinician's Cancel there to press again.
        const error = await errorOf(response);
        await updateStudy(this.deps.db, studyId, {
          state: "paused",
          pausedByUser: true,
          note: `Not cancelled: ${describeError(error)} Paused; cancel again later.`,
        });
        this.emit();
        return;
      }
    }
    await finishStudy(this.deps.db, studyId, { state: "cancelled", note: null });
    this.emit();
  }

  private async loop(): Promise<void> {
    do {
      this.again = false;
      for (const study of await activeStudies(this.deps.db)) {
        if (study.pausedByUser) continue;
        if (!this.deps.online()) {
          await this.waitForNetwork(study);
          return;
        }
        await this.process(study);
        if (!this.deps.online()) return;
      }
    } while (this.again);
  }

  private async waitForNetwork(study: QueuedStudy): Promise<void> {
    await updateStudy(this.deps.db, study.id, { state: "paused", note: "Waiting for the network: the upload goes on by itself." });
    this.emit();
  }

  private async process(study: QueuedStudy): Promise<void> {
    this.current = study.id;
    this.controller = new AbortController();
    this.sender.begin(study.id);
    const signal = this.controller.signal;
    try {
      const files = await studyFiles(this.deps.db, study.id);
      mark("relaypacs:hash-start");
      await this.hashFiles(study, files, signal);
      mark("relaypacs:hash-end");
      for (let attempt = 0; attempt < 3; attempt++) {
        const upload = await this.start(study, files, signal);
        if (upload === null) return; // the gateway had it already
        mark("relaypacs:chunks-start");
        await this.sendChunks(study, files, upload, signal);
        mark("relaypacs:chunks-end");
        if (await this.complete(study, upload, signal)) {
          mark("relaypacs:complete-end");
          return;
        }
      }
      throw new ApiError(409, "upload_incomplete", "incomplete");
    } catch (error) {
      if (error instanceof Stopped || signal.aborted) {
        // Read and written at once: not over a pause or a cancel by the clinician.
        await this.deps.db.studies
          .where("id")
          .equals(study.id)
          .and((s) => s.state !== "cancelled" && !s.pausedByUser)
          .modify({
            state: "paused",
            note: this.deps.online() ? "Paused." : "Waiting for the network: the upload goes on by itself.",
          });
      } else if (error instanceof ApiError && error.status === 401) {
        // The session ended (signed out elsewhere, expired): nothing is lost; the upload goes
        // on from the gateway's record after the next sign-in.
        await updateStudy(this.deps.db, study.id, { state: "paused", note: "Sign in again to go on with this upload." });
      } else {
        await updateStudy(this.deps.db, study.id, { state: "failed", note: describeError(error) });
      }
    } finally {
      // Requests of the study still going (a lane waiting for the gateway while another got a
      // final answer) stop with it.
      this.controller.abort();
      this.current = null;
      this.controller = null;
      this.sender.end();
      this.emit();
    }
  }

  private async hashFiles(study: QueuedStudy, files: QueuedFile[], signal: AbortSignal): Promise<void> {
    const todo = files.filter((f) => f.sha256 === null);
    if (todo.length === 0) return;
    await updateStudy(this.deps.db, study.id, { state: "hashing", note: null });
    this.emit();
    let next = 0;
    const lane = async () => {
      while (next < todo.length) {
        const file = todo[next++]!;
        if (!file.blob) throw new Error("The files of this study are no longer on this device.");
        const sha256 = await this.deps.hash(file.blob);
        if (signal.aborted) throw new Stopped();
        file.sha256 = sha256;
        await this.deps.db.files.update(file.id!, { sha256 });
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.parallel, todo.length) }, lane));
  }

  /** POST /uploads: a new upload, or the one in progress for this study with what it lacks. */
  private async start(study: QueuedStudy, files: QueuedFile[], signal: AbortSignal): Promise<UploadAnswer | null> {
    // Asked for at creation only: a resumed upload keeps the size it was created with (the
    // answer's chunk_size is the one to use).
    const chunkSize = await this.chunkSizeFor(files.map((f) => f.size), signal);
    const body = {
      study_instance_uid: study.studyUid,
      metadata: {
        patient_name: study.patientName || null,
        patient_id: study.patientId || null,
        study_date: study.studyDate || null,
        modality: study.modality || null,
        study_description: study.description || null,
        accession_number: study.accessionNumber || null,
      },
      files: files.map((f) => ({ name: f.name, size: f.size, sha256: f.sha256! })),
      all_or_nothing: false,
      ...(chunkSize === null ? {} : { chunk_size: chunkSize }),
    };
    const response = await this.sender.send(
      (attempt) =>
        this.deps.fetch(
          new Request(`${this.api}/uploads`, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" }, signal: attempt }),
        ),
      signal,
    );
    if (response.status === 409) {
      const error = await errorOf(response);
      if (error.code === "study_already_delivered") {
        const existing = (error.details.upload ?? {}) as { id?: string };
        await finishStudy(this.deps.db, study.id, { state: "already_sent", uploadId: existing.id ?? null, note: null, sentBytes: study.totalBytes });
        return null;
      }
      throw error;
    }
    if (!response.ok) throw await errorOf(response);
    const upload = (await response.json()) as UploadAnswer;
    const missing = (upload.files ?? []).reduce(
      (sum, f) => sum + f.missing_chunks.reduce((s, c) => s + Math.min(upload.chunk_size, f.size - c * upload.chunk_size), 0),
      0,
    );
    study.uploadId = upload.id;
    study.sentBytes = study.totalBytes - missing;
    this.sender.phase = "uploading";
    await updateStudy(this.deps.db, study.id, { uploadId: upload.id, state: "uploading", note: null, sentBytes: study.sentBytes });
    this.samples.set(study.id, []);
    this.track(study);
    return upload;
  }

  /** The missing chunks, `parallel` requests at a time: whole small files in chunk batches
   * (batch.ts) while the gateway takes them, the other chunks one by one. */
  private async sendChunks(study: QueuedStudy, files: QueuedFile[], upload: UploadAnswer, signal: AbortSignal): Promise<void> {
    const tasks: ChunkTask[] = [];
    for (const remote of upload.files ?? []) {
      const file = files[remote.index];
      if (!file) throw new ApiError(404, "chunk_out_of_range", "manifest mismatch");
      for (const chunk of remote.missing_chunks) tasks.push({ file, chunk, count: remote.chunk_count });
    }
    const requests = planRequests(tasks, Math.min(this.deps.batchBytes ?? BATCH_BYTES, upload.chunk_size));
    // Until the gateway says it has no chunk batches (one from before them).
    let batches = true;
    let next = 0;
    const lane = async () => {
      while (next < requests.length) {
        if (signal.aborted) throw new Stopped();
        const request = requests[next++]!;
        if (!request.batch) {
          const { task } = request;
          await this.sendChunk(study, upload, task.file, task.chunk, task.count, signal);
          continue;
        }
        if (batches && (await this.sendBatch(study, upload, request.tasks, signal))) continue;
        batches = false;
        for (const task of request.tasks) await this.sendChunk(study, upload, task.file, task.chunk, task.count, signal);
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.parallel, requests.length) }, lane));
  }

  /**
   * Whole files in one request (a chunk batch), each declared with its manifest SHA-256. Each
   * part has its own answer: stored or already stored, it is acknowledged; refused as a
   * conflict (that chunk is stored with other bytes), the study fails as it would on a chunk
   * PUT's 409; refused otherwise (its bytes are not those of its SHA-256), it goes again alone
   * as a chunk PUT (refused again, the study fails as the single-chunk path does). False, and
   * nothing stored, when the gateway has no such route (404 or 405 of an older gateway) or
   * takes smaller batches than the upload's chunk size (413: its chunk size lowered since).
   */
  private async sendBatch(study: QueuedStudy, upload: UploadAnswer, tasks: ChunkTask[], signal: AbortSignal): Promise<boolean> {
    const parts: BatchPart[] = [];
    for (const { file, chunk } of tasks) {
      if (!file.blob || !file.sha256) throw new Error("The files of this study are no longer on this device.");
      parts.push({ fileIndex: file.index, chunkIndex: chunk, sha256: file.sha256, data: await file.blob.arrayBuffer() });
    }
    const body = batchBody(parts);
    const url = `${this.api}/uploads/${upload.id}/chunks:batch`;
    const headers = { "Content-Type": BATCH_MEDIA_TYPE };
    const put = this.deps.putChunk ?? ((p: ChunkPut) => this.fetchChunk(p));
    this.link.started();
    let acknowledged = 0;
    let answers: PartAnswer[];
    try {
      const response = await this.sender.send(
        (attempt, progress) => put({ url, method: "POST", body, headers, signal: attempt, progress }),
        signal,
        this.stallTimeout,
      );
      if (!response.ok) {
        const error = await errorOf(response);
        const noRoute = (error.status === 404 || error.status === 405) && !UPLOAD_ERRORS.has(error.code);
        if (noRoute || error.code === "chunk_batch_too_large") return false;
        throw error;
      }
      answers = partAnswers(await response.json(), parts);
      acknowledged = answers.reduce((sum, a) => sum + (a.status === "refused" ? 0 : a.size), 0);
    } finally {
      this.link.finished(acknowledged);
    }
    study.sentBytes += acknowledged;
    this.track(study);
    const again: ChunkTask[] = [];
    for (const [i, answer] of answers.entries()) {
      if (answer.status !== "refused") continue;
      if (answer.code === "chunk_conflict") throw new ApiError(409, answer.code, answer.message ?? "chunk conflict");
      again.push(tasks[i]!);
    }
    for (const task of again) await this.sendChunk(study, upload, task.file, task.chunk, task.count, signal);
    return true;
  }

  private async sendChunk(
    study: QueuedStudy,
    upload: UploadAnswer,
    file: QueuedFile,
    chunk: number,
    chunkCount: number,
    signal: AbortSignal,
  ): Promise<void> {
    if (!file.blob) throw new Error("The files of this study are no longer on this device.");
    const start = chunk * upload.chunk_size;
    // The chunk's bytes read once (a Blob body read from IndexedDB by the network stack is
    // several times slower), then hashed unless the file is one chunk: then its SHA-256 is
    // the chunk's.
    const body = await file.blob.slice(start, Math.min(file.size, start + upload.chunk_size)).arrayBuffer();
    const digest =
      chunkCount === 1 && file.sha256
        ? base64(hexToBytes(file.sha256))
        : base64(await crypto.subtle.digest("SHA-256", body));
    const url = `${this.api}/uploads/${upload.id}/files/${file.index}/chunks/${chunk}`;
    const headers = { "Content-Type": "application/octet-stream", "Content-Digest": `sha-256=:${digest}:` };
    const put = this.deps.putChunk ?? ((p: ChunkPut) => this.fetchChunk(p));
    this.link.started();
    let acknowledged = 0;
    try {
      const response = await this.sender.send(
        (attempt, progress) => put({ url, body, headers, signal: attempt, progress }),
        signal,
        this.stallTimeout,
      );
      if (!response.ok) throw await errorOf(response);
      await response.body?.cancel();
      acknowledged = body.byteLength;
    } finally {
      this.link.finished(acknowledged);
    }
    study.sentBytes += body.byteLength;
    this.track(study);
  }

  /** A chunk request by `fetch`: its progress is only its answer's arrival. */
  private async fetchChunk(put: ChunkPut): Promise<Response> {
    const response = await this.deps.fetch(new Request(put.url, { method: put.method ?? "PUT", body: put.body, headers: put.headers, signal: put.signal }));
    put.progress();
    return response;
  }

  /** The chunk size to ask for a new upload of files of `sizes` (null: the server's own). */
  private async chunkSizeFor(sizes: number[], signal: AbortSignal): Promise<number | null> {
    const fixed = this.deps.chunkSize ?? "auto";
    if (fixed !== "auto") return fixed;
    if (this.link.rate() === null && this.link.rtt === null) await this.measureRtt(signal);
    return fittedChunkSize({ rate: this.link.rate(), rtt: this.link.rtt }, this.parallel, sizes);
  }

  /** The shortest of three round trips of the gateway's liveness probe, kept in `link`. */
  private async measureRtt(signal: AbortSignal): Promise<void> {
    let best = Infinity;
    try {
      for (let i = 0; i < 3; i++) {
        const started = performance.now();
        const response = await this.sender.send((attempt) => this.deps.fetch(new Request(`${this.deps.baseUrl ?? ""}/health/live`, { signal: attempt })), signal);
        await response.body?.cancel();
        if (!response.ok) throw new Error(`health ${response.status}`);
        best = Math.min(best, performance.now() - started);
      }
      this.link.rtt = best;
    } catch (error) {
      if (error instanceof Stopped) throw error;
      this.link.rtt = 0; // no answer to time: the server's own size
    }
  }

  /** POST complete: true when accepted; false when chunks are missing (sent again). */
  private async complete(study: QueuedStudy, upload: UploadAnswer, signal: AbortSignal): Promise<boolean> {
    this.sender.phase = "completing";
    await updateStudy(this.deps.db, study.id, { state: "completing", sentBytes: study.sentBytes });
    this.emit();
    const response = await this.sender.send(
      (attempt) => this.deps.fetch(new Request(`${this.api}/uploads/${upload.id}/complete`, { method: "POST", signal: attempt })),
      signal,
    );
    if (response.status === 409) {
      const error = await errorOf(response);
      if (error.code === "upload_incomplete") return false;
      throw error;
    }
    if (!response.ok) throw await errorOf(response);
    await finishStudy(this.deps.db, study.id, { state: "sent", note: null, sentBytes: study.totalBytes });
    this.progress.delete(study.id);
    return true;
  }

  private track(study: QueuedStudy): void {
    const now = Date.now();
    // The bytes sent, kept on the device now and then (a reload shows them before the
    // gateway's record is read again).
    if (now - (this.saved.get(study.id) ?? 0) > 1000) {
      this.saved.set(study.id, now);
      void updateStudy(this.deps.db, study.id, { sentBytes: study.sentBytes });
    }
    const samples = this.samples.get(study.id) ?? [];
    samples.push({ at: now, bytes: study.sentBytes });
    while (samples.length > 2 && now - samples[0]!.at > 10_000) samples.shift();
    this.samples.set(study.id, samples);
    const first = samples[0]!;
    const seconds = (now - first.at) / 1000;
    const speed = seconds >= 1 ? (study.sentBytes - first.bytes) / seconds : null;
    this.progress.set(study.id, {
      sentBytes: study.sentBytes,
      totalBytes: study.totalBytes,
      speed,
      remaining: speed ? Math.max(0, (study.totalBytes - study.sentBytes) / speed) : null,
    });
    this.emit();
  }
}

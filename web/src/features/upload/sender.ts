// The upload engine's requests to the gateway: each one tried until it gets an answer, the study
// shown "waiting" while the gateway does not answer (engine.ts uses one Sender per tab).
//
// A gateway that does not answer, or answers "not now" (5xx but 501/505, 408, 429, a network
// error, a stall), never fails a study: after the quick retries (`retryDelays`) the study is
// "waiting" (its note says why) and each request goes on being tried with a backoff capped at
// `maxRetryDelay` (with jitter), until it gets an answer, the clinician pauses or cancels, or
// the browser goes offline. `online`, a new study queued, or any request of the study that
// gets through again (`kick`, `wake`) cut the wait short. A 500 is retried too: the gateway
// answers it for what it did not foresee (a database failover mid-request, a restart), which
// mostly passes; one that does not pass stays visible in the note and in the gateway's error
// reports, and waiting loses nothing where failing would ask the clinician to act.
// Only a final answer (4xx but 408/429, 409 conflicts, 413...) fails a study, as before.
import type { QueueDatabase, StudyState } from "../../lib/db";
import { describeError, errorOf } from "../../lib/api/errors";
import { StallError, StallWatchdog } from "./link";

/** A request other than a chunk's with no answer for this long (ms) goes again (the CLI's
 * request timeout). */
export const REQUEST_TIMEOUT_MS = 60_000;

/** The study's requests stop: a pause, a cancel, or the browser offline. */
export class Stopped extends Error {}

/** An answer that means "not now": the request is tried again (501 and 505 are final). */
export function isTransient(status: number): boolean {
  return (status >= 500 && status !== 501 && status !== 505) || status === 408 || status === 429;
}

/** The note of a study waiting for the gateway. */
export function waitingNote(reason: unknown): string {
  return `Waiting for the gateway (${describeError(reason)}). The upload tries again by itself; nothing is lost.`;
}

export interface SenderDeps {
  db: QueueDatabase;
  online: () => boolean;
  /** The waits (ms) of the quick retries of a request; then the study is "waiting". */
  retryDelays?: number[];
  /** The longest wait (ms) between two tries while the study is waiting (30 s). */
  maxRetryDelay?: number;
  /** A request with no answer for this long (ms) is aborted and sent again. */
  requestTimeout?: number;
  /** The study's state or note changed (the engine tells its listeners). */
  changed: () => void;
}

export class Sender {
  /** Requests given up because they made no progress (tests and the benchmark read it). */
  stalls = 0;
  /** The study's state to go back to when the gateway answers again. */
  phase: StudyState = "queued";
  /** The study whose requests these are (null between studies). */
  private study: string | null = null;
  /** The current study is "waiting" (its note shown), and the note it shows. */
  private waitingNoteShown: string | null = null;
  /** The backoff waits under way: each ends at once when called. */
  private wakers = new Set<() => void>();
  private readonly retryDelays: number[];
  private readonly maxRetryDelay: number;
  private readonly requestTimeout: number;

  constructor(private readonly deps: SenderDeps) {
    this.retryDelays = deps.retryDelays ?? [500, 1000, 2000, 4000, 8000];
    this.maxRetryDelay = deps.maxRetryDelay ?? 30_000;
    this.requestTimeout = deps.requestTimeout ?? REQUEST_TIMEOUT_MS;
  }

  /** The requests that follow are the study's. */
  begin(studyId: string): void {
    this.study = studyId;
    this.phase = "queued";
    this.waitingNoteShown = null;
  }

  /** The study is over (sent, failed, paused). */
  end(): void {
    this.study = null;
    this.waitingNoteShown = null;
  }

  /** End the backoff waits under way: the requests waiting for the gateway are tried now. */
  wake(): void {
    for (const waker of [...this.wakers]) waker();
  }

  /**
   * One request, tried until it gets an answer that is not transient (`isTransient`): network
   * errors, stalls and "not now" answers are retried after `retryDelays`, then (the study shown
   * "waiting") with a backoff capped at `maxRetryDelay`. Offline, a pause or a cancel (`signal`)
   * stop it at once. Each attempt gets its own signal, aborted with a StallError when the attempt
   * made no progress for `timeout` ms (the attempt calls `progress` at each; without calls, the
   * whole attempt must end within it): then it is retried like a network error.
   */
  async send(
    request: (attempt: AbortSignal, progress: () => void) => Promise<Response>,
    signal: AbortSignal,
    timeout: number = this.requestTimeout,
  ): Promise<Response> {
    for (let attempt = 0; ; attempt++) {
      if (signal.aborted || !this.deps.online()) throw new Stopped();
      let response: Response | null = null;
      let reason: unknown = null;
      const controller = new AbortController();
      const relay = () => controller.abort(signal.reason);
      signal.addEventListener("abort", relay, { once: true });
      const watchdog = new StallWatchdog(timeout, (stall) => controller.abort(stall));
      try {
        response = await request(controller.signal, () => watchdog.poke());
      } catch (error) {
        if (signal.aborted || !this.deps.online()) throw new Stopped();
        const stalled = controller.signal.reason instanceof StallError;
        if (stalled) this.stalls += 1;
        reason = stalled ? controller.signal.reason : error;
      } finally {
        watchdog.stop();
        signal.removeEventListener("abort", relay);
      }
      let retryAfter = 0;
      if (response !== null) {
        if (!isTransient(response.status)) {
          await this.answered(signal);
          return response;
        }
        retryAfter = Number(response.headers.get("Retry-After")) * 1000 || 0;
        reason = await errorOf(response);
      }
      if (attempt >= this.retryDelays.length) await this.waiting(reason, signal);
      await this.sleep(this.backoff(attempt, retryAfter), signal);
    }
  }

  /** The wait (ms) before try `attempt + 1`: the quick ones, then doubling up to the cap, with
   * jitter (half of it random: the lanes of a study, and the tabs of a clinic, spread out). */
  private backoff(attempt: number, retryAfter: number): number {
    const quick = this.retryDelays;
    if (attempt < quick.length) return quick[attempt]!;
    const last = quick[quick.length - 1] ?? 1000;
    const base = Math.min(this.maxRetryDelay, Math.max(retryAfter, last * 2 ** (attempt - quick.length + 1)));
    return base / 2 + Math.random() * (base / 2);
  }

  /** `ms`, or less: a pause, a cancel or offline (`signal`) throw Stopped, `wake` ends it. */
  private sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const end = () => {
        clearTimeout(timer);
        this.wakers.delete(done);
        signal.removeEventListener("abort", stop);
      };
      const done = () => {
        end();
        resolve();
      };
      const stop = () => {
        end();
        reject(new Stopped());
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
      signal.addEventListener("abort", stop, { once: true });
      if (signal.aborted) stop();
    });
  }

  /** The quick retries did not do: the study is shown waiting for the gateway, with why. */
  private async waiting(reason: unknown, signal: AbortSignal): Promise<void> {
    const id = this.study;
    const note = waitingNote(reason);
    if (id === null || signal.aborted || this.waitingNoteShown === note) return;
    this.waitingNoteShown = note;
    // Not over a pause or a cancel by the clinician that raced with this request.
    await this.deps.db.studies
      .where("id")
      .equals(id)
      .and((s) => !s.pausedByUser && s.state !== "cancelled")
      .modify({ state: "waiting", note });
    this.deps.changed();
  }

  /** A request got a final answer: a study that was waiting goes on, and so do its other
   * requests (their waits cut short). */
  private async answered(signal: AbortSignal): Promise<void> {
    const id = this.study;
    if (id === null || this.waitingNoteShown === null || signal.aborted) return;
    this.waitingNoteShown = null;
    await this.deps.db.studies
      .where("id")
      .equals(id)
      .and((s) => s.state === "waiting")
      .modify({ state: this.phase, note: null });
    this.wake();
    this.deps.changed();
  }
}

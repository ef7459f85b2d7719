// The link to the gateway as the app measures it, the chunk size fitted to it, and the watchdog
// that gives up a request which stopped moving. The same rules as the CLI's
// (relaypacs/client/link.py; docs/api.md, "Chunk size and cuts"):
//
// A chunk is all or nothing: when a connection is cut, what of a chunk in flight was sent is
// lost and the whole chunk goes again, so a cut costs about `parallel` x the chunk size. The
// server's size (8 MiB) suits a fast network; on a slow link it makes a cut cost up to 48 MiB
// at 6 in flight. So the app asks for its own chunk size at `POST /uploads`, fitted to the
// goodput measured so far in this tab: the bytes in flight then carry about IN_FLIGHT_SECONDS
// of the link's rate. Before anything is measured, the round trip decides: a local network
// keeps the server's size; further away the first guess is FIRST_GUESS.
// (Not navigator.connection.downlink: a fresh headless Chromium said 1.4 Mbit/s on a 20 Mbit/s
// link, which made the first guess 64 KiB: 0.54x the link's rate against 0.82x with 256 KiB,
// `bench --net 20mbit,100ms,cut`, 62.9 MB study. It is a download estimate besides.)
// A chunk size is fixed when its upload is created: a resumed upload keeps its own.

const KiB = 1024;
/** The gateway's bounds (relaypacs.uploads.schemas); it grants at most its own setting. */
export const MIN_CHUNK = 64 * KiB;
export const MAX_CHUNK = 64 * 1024 * KiB;
/** Bytes in flight worth this many seconds of the measured rate. */
export const IN_FLIGHT_SECONDS = 0.5;
/** Below this round trip (ms) the link is a local network: the server's chunk size. */
export const LAN_RTT_MS = 20;
/** The chunk size before any rate is known, on a link with a longer round trip. */
export const FIRST_GUESS = 256 * KiB;
/** A file up to this size is never split: one chunk, one round trip, its manifest SHA-256 as
 * its digest (split small files measured 0.65x the link's rate instead of 0.80x). */
export const WHOLE_FILE_MAX = 1 << 20;
/** A rate is trusted once this much was acknowledged over this long. */
export const MIN_MEASURED_BYTES = 1 << 20;
export const MIN_MEASURED_MS = 500;
/** The rate is that of the last WINDOW_MS of busy time (a link that changes is followed). */
export const WINDOW_MS = 20_000;
/** Milliseconds a chunk request may make no progress (no body bytes taken, no answer) before
 * it is given up and sent again on a new connection: a link that silently stopped (no reset
 * ever comes) is noticed in seconds, not after a request timeout. */
export const STALL_TIMEOUT_MS = 10_000;

type Clock = () => number;

/**
 * Goodput of the chunk PUTs: bytes acknowledged per second of the time at least one was in
 * flight (retries and their back-off included: a link cut often measures slower, which asks
 * for smaller chunks), over a sliding window of the last WINDOW_MS of that busy time.
 */
export class LinkMeter {
  /** The shortest round trip (ms) of a light request, once measured. */
  rtt: number | null = null;
  private inFlight = 0;
  private since = 0;
  /** Busy periods that ended: [start, end, bytes acknowledged in them]. */
  private periods: { start: number; end: number; bytes: number }[] = [];
  private bytesNow = 0;

  constructor(private readonly clock: Clock = () => performance.now()) {}

  started(): void {
    if (this.inFlight === 0) {
      this.since = this.clock();
      this.bytesNow = 0;
    }
    this.inFlight += 1;
  }

  /** A request ended: `acknowledged` bytes were stored by the gateway (0 for a failure). */
  finished(acknowledged: number): void {
    this.inFlight -= 1;
    this.bytesNow += acknowledged;
    if (this.inFlight === 0) {
      this.periods.push({ start: this.since, end: this.clock(), bytes: this.bytesNow });
      this.bytesNow = 0;
      this.trim();
    }
  }

  /** Bytes per second, or null until enough was measured. */
  rate(): number | null {
    let busy = 0;
    let bytes = 0;
    if (this.inFlight) {
      busy += this.clock() - this.since;
      bytes += this.bytesNow;
    }
    // The newest periods first, up to the window (the oldest one counted in part).
    for (let i = this.periods.length - 1; i >= 0 && busy < WINDOW_MS; i--) {
      const period = this.periods[i]!;
      const length = period.end - period.start;
      const share = length > 0 ? Math.min(1, (WINDOW_MS - busy) / length) : 1;
      busy += length * share;
      bytes += period.bytes * share;
    }
    if (bytes < MIN_MEASURED_BYTES || busy < MIN_MEASURED_MS) return null;
    return (bytes * 1000) / busy;
  }

  private trim(): void {
    let busy = 0;
    for (let i = this.periods.length - 1; i >= 0; i--) {
      busy += this.periods[i]!.end - this.periods[i]!.start;
      if (busy >= WINDOW_MS) {
        this.periods.splice(0, i);
        return;
      }
    }
  }
}

/** The largest power of two from MIN_CHUNK to MAX_CHUNK at most `wanted` bytes. */
function powerOfTwoUpTo(wanted: number): number {
  let size = MIN_CHUNK;
  while (size * 2 <= wanted && size * 2 <= MAX_CHUNK) size *= 2;
  return size;
}

export interface LinkEstimate {
  /** Measured goodput, bytes per second (LinkMeter.rate). */
  rate: number | null;
  /** Measured round trip, ms. */
  rtt: number | null;
}

/**
 * The chunk size to ask for, MIN_CHUNK to MAX_CHUNK: a power of two fitted to the link, or
 * larger so that the largest of `sizes` (the study's files) up to WHOLE_FILE_MAX is one chunk;
 * null for the server's own (a local network, or nothing known).
 */
export function fittedChunkSize(link: LinkEstimate, parallel: number, sizes: readonly number[] = []): number | null {
  let size: number;
  const lanes = Math.max(1, parallel);
  if (link.rate !== null) {
    size = powerOfTwoUpTo((link.rate * IN_FLIGHT_SECONDS) / lanes);
  } else {
    if (link.rtt === null || link.rtt < LAN_RTT_MS) return null;
    size = FIRST_GUESS;
  }
  const whole = sizes.reduce((largest, s) => (s <= WHOLE_FILE_MAX && s > largest ? s : largest), 0);
  return Math.max(size, whole);
}

/** Raised (as the abort reason) when a request made no progress for the stall timeout. */
export class StallError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`no progress for ${timeoutMs / 1000} s`);
    this.name = "StallError";
  }
}

/**
 * Calls `onStall` once when `poke` was not called for `timeoutMs` since the start or the last
 * poke; `stop` disarms it. The progress of a request (body bytes taken, its answer arriving)
 * pokes it.
 */
export class StallWatchdog {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private stopped = false;

  constructor(
    private readonly timeoutMs: number,
    private readonly onStall: (error: StallError) => void,
  ) {
    this.arm();
  }

  poke(): void {
    if (this.stopped) return;
    this.arm();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private arm(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.stopped) return;
      this.stopped = true;
      this.onStall(new StallError(this.timeoutMs));
    }, this.timeoutMs);
  }
}

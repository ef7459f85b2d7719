// The link rules of the upload engine (link.ts): the chunk size fitted to the measured rate,
// the sliding-window meter, the stall watchdog.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  FIRST_GUESS,
  LinkMeter,
  MAX_CHUNK,
  MIN_CHUNK,
  StallError,
  StallWatchdog,
  WHOLE_FILE_MAX,
  WINDOW_MS,
  fittedChunkSize,
} from "./link";

const KiB = 1024;
const MiB = 1024 * KiB;

describe("the chunk size fitted to the link", () => {
  it("keeps the server's own on a local network, or when nothing is known", () => {
    expect(fittedChunkSize({ rate: null, rtt: null }, 6)).toBeNull();
    expect(fittedChunkSize({ rate: null, rtt: 1 }, 6)).toBeNull();
    expect(fittedChunkSize({ rate: null, rtt: 19.9 }, 6)).toBeNull();
  });

  it("starts with the first guess further away", () => {
    expect(fittedChunkSize({ rate: null, rtt: 20 }, 6)).toBe(FIRST_GUESS);
    expect(fittedChunkSize({ rate: null, rtt: 100 }, 6)).toBe(FIRST_GUESS);
  });

  it("keeps half a second of the measured rate in flight, a power of two within the bounds", () => {
    // 20 Mbit/s = 2.5 MB/s, 4 in flight: 312 kB each -> 256 KiB (the CLI's figure).
    expect(fittedChunkSize({ rate: 2_500_000, rtt: 100 }, 4)).toBe(256 * KiB);
    // 6 in flight: 208 kB -> 128 KiB.
    expect(fittedChunkSize({ rate: 2_500_000, rtt: 100 }, 6)).toBe(128 * KiB);
    // A measured rate wins over the round trip, even on a local network.
    expect(fittedChunkSize({ rate: 200 * MiB, rtt: 1 }, 6)).toBe(16 * MiB);
    expect(fittedChunkSize({ rate: 10, rtt: 100 }, 6)).toBe(MIN_CHUNK);
    expect(fittedChunkSize({ rate: 1e12, rtt: 100 }, 6)).toBe(MAX_CHUNK);
  });

  it("never splits a file of 1 MiB or less", () => {
    const sizes = [300 * KiB, 700 * KiB, 5 * MiB];
    expect(fittedChunkSize({ rate: null, rtt: 100 }, 6, sizes)).toBe(700 * KiB);
    expect(fittedChunkSize({ rate: 2_500_000, rtt: 100 }, 6, [WHOLE_FILE_MAX, 3 * MiB])).toBe(WHOLE_FILE_MAX);
    // Files over 1 MiB are split at the fitted size.
    expect(fittedChunkSize({ rate: 2_500_000, rtt: 100 }, 6, [WHOLE_FILE_MAX + 1])).toBe(128 * KiB);
  });
});

describe("the link meter", () => {
  let now = 0;
  const clock = () => now;

  it("says nothing until a megabyte was acknowledged over half a second", () => {
    now = 0;
    const meter = new LinkMeter(clock);
    meter.started();
    now = 400;
    meter.finished(4 * MiB);
    expect(meter.rate()).toBeNull(); // 0.4 s
    meter.started();
    now = 1000;
    meter.finished(0); // a failed request: time, no bytes
    expect(meter.rate()).toBeCloseTo((4 * MiB * 1000) / 1000);
  });

  it("counts only the time a request was in flight, parallel requests once", () => {
    now = 0;
    const meter = new LinkMeter(clock);
    meter.started();
    meter.started();
    now = 1000;
    meter.finished(1 * MiB);
    now = 2000;
    meter.finished(1 * MiB);
    now = 60_000; // idle: not counted
    meter.started();
    now = 62_000;
    meter.finished(2 * MiB);
    expect(meter.rate()).toBeCloseTo((4 * MiB * 1000) / 4000);
  });

  it("follows a link that changed: only the last window of busy time counts", () => {
    now = 0;
    const meter = new LinkMeter(clock);
    meter.started();
    now = WINDOW_MS;
    meter.finished(100 * MiB); // fast at first
    meter.started();
    now = 2 * WINDOW_MS;
    meter.finished(10 * MiB); // then ten times slower
    expect(meter.rate()).toBeCloseTo((10 * MiB * 1000) / WINDOW_MS);
    // In flight, half the window: half the slow period and the new bytes.
    meter.started();
    now = 2.5 * WINDOW_MS;
    expect(meter.rate()).toBeCloseTo((5 * MiB * 1000) / WINDOW_MS);
  });
});

describe("the stall watchdog", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("fires once when nothing moved for the timeout", () => {
    const stalls: StallError[] = [];
    new StallWatchdog(10_000, (error) => stalls.push(error));
    vi.advanceTimersByTime(9_999);
    expect(stalls).toHaveLength(0);
    vi.advanceTimersByTime(1);
    expect(stalls).toHaveLength(1);
    expect(stalls[0]).toBeInstanceOf(StallError);
    vi.advanceTimersByTime(60_000);
    expect(stalls).toHaveLength(1);
  });

  it("lets a slow request that keeps moving go on, however long it takes", () => {
    let stalled = false;
    const watchdog = new StallWatchdog(10_000, () => (stalled = true));
    for (let i = 0; i < 100; i++) {
      vi.advanceTimersByTime(9_000);
      watchdog.poke();
    }
    expect(stalled).toBe(false); // 900 s of progress
    vi.advanceTimersByTime(10_000);
    expect(stalled).toBe(true); // then it stopped
  });

  it("is silent once stopped", () => {
    let stalled = false;
    const watchdog = new StallWatchdog(1_000, () => (stalled = true));
    watchdog.stop();
    watchdog.poke();
    vi.advanceTimersByTime(5_000);
    expect(stalled).toBe(false);
  });
});

import { describe, expect, it } from "vitest";
import { dailySeries, describeSeries, failureReasons, formatBytes, formatLatency, lastDays, rangeProblem, targetTotals, totals, type DayStats } from "./stats";

function day(date: string, figures: Partial<DayStats> = {}): DayStats {
  return {
    day: date,
    live: false,
    uploads: 0,
    bytes: 0,
    instances: 0,
    delivered: 0,
    latency_p50_seconds: null,
    latency_p95_seconds: null,
    statuses: {},
    failures: {},
    targets: [],
    ...figures,
  };
}

function target(name: string, figures: Partial<DayStats> = {}): DayStats["targets"][number] {
  const whole = day("2026-01-01", figures);
  return {
    target: name,
    uploads: whole.uploads,
    bytes: whole.bytes,
    instances: whole.instances,
    delivered: whole.delivered,
    latency_p50_seconds: whole.latency_p50_seconds,
    latency_p95_seconds: whole.latency_p95_seconds,
    statuses: whole.statuses,
    failures: whole.failures,
  };
}

const DAYS: DayStats[] = [
  day("2026-03-01", {
    uploads: 3,
    bytes: 3_000_000,
    instances: 10,
    delivered: 2,
    latency_p50_seconds: 4,
    latency_p95_seconds: 9,
    failures: { not_dicom: 2, dicom_truncated: 1 },
    targets: [target("pacs", { uploads: 2, bytes: 2_000_000, instances: 8, delivered: 2, latency_p50_seconds: 4, latency_p95_seconds: 9 })],
  }),
  day("2026-03-02"),
  day("2026-03-03", {
    uploads: 1,
    bytes: 500,
    instances: 1,
    delivered: 1,
    latency_p50_seconds: 7,
    latency_p95_seconds: 7,
    failures: { not_dicom: 1, some_new_code: 3, pacs_refused: 0 },
    targets: [
      target("pacs", { uploads: 1, bytes: 500, instances: 1, delivered: 1, latency_p50_seconds: 7, latency_p95_seconds: 7, failures: { pacs_refused: 1 } }),
      target("archive", { uploads: 1, bytes: 500 }),
    ],
  }),
];

describe("the date range", () => {
  it("defaults to the last 30 UTC days, today included", () => {
    expect(lastDays(new Date("2026-03-31T23:30:00Z"))).toEqual({ from: "2026-03-02", to: "2026-03-31" });
    expect(lastDays(new Date("2026-01-05T00:10:00Z"), 7)).toEqual({ from: "2025-12-30", to: "2026-01-05" });
  });

  it("refuses what the API would refuse, before asking it", () => {
    expect(rangeProblem({ from: "2026-03-01", to: "2026-03-01" })).toBeNull();
    expect(rangeProblem({ from: "2025-01-01", to: "2026-01-01" })).toBeNull(); // 366 days
    expect(rangeProblem({ from: "2024-12-31", to: "2026-01-01" })).toMatch(/at most 366 days/);
    expect(rangeProblem({ from: "2026-03-02", to: "2026-03-01" })).toMatch(/not be after/);
    expect(rangeProblem({ from: "", to: "2026-03-01" })).toMatch(/both dates/);
  });
});

describe("the API's days, shaped for the page", () => {
  it("gives one column per day, oldest first, gaps kept as null", () => {
    expect(dailySeries(DAYS)).toEqual({
      days: ["2026-03-01", "2026-03-02", "2026-03-03"],
      uploads: [3, 0, 1],
      bytes: [3_000_000, 0, 500],
      delivered: [2, 0, 1],
      p50: [4, null, 7],
      p95: [9, null, 7],
    });
  });

  it("adds up the range", () => {
    expect(totals(DAYS)).toEqual({ uploads: 4, bytes: 3_000_500, instances: 11, delivered: 3, refusedFiles: 7 });
    expect(totals([])).toEqual({ uploads: 0, bytes: 0, instances: 0, delivered: 0, refusedFiles: 0 });
  });

  it("counts the failure reasons, most frequent first, with the app's sentence where it has one", () => {
    expect(failureReasons(DAYS)).toEqual([
      { code: "not_dicom", count: 3, message: "Not a DICOM file." },
      { code: "some_new_code", count: 3, message: null },
      { code: "dicom_truncated", count: 1, message: "A damaged DICOM file (cut short)." },
    ]);
    expect(failureReasons([day("2026-03-01")])).toEqual([]);
  });

  it("adds up each target, keeping its worst daily percentiles (they do not add up)", () => {
    expect(targetTotals(DAYS)).toEqual([
      { target: "archive", uploads: 1, bytes: 500, instances: 0, delivered: 0, refusedFiles: 0, worstP50: null, worstP95: null },
      { target: "pacs", uploads: 3, bytes: 2_000_500, instances: 9, delivered: 3, refusedFiles: 1, worstP50: 7, worstP95: 9 },
    ]);
  });

  it("summarises a chart in a sentence", () => {
    const s = dailySeries(DAYS);
    expect(describeSeries("Uploads per day", s.days, s.uploads, String)).toBe(
      "Uploads per day, 3 days from 2026-03-01 to 2026-03-03: highest 3 on 2026-03-01. The table below lists every day.",
    );
    expect(describeSeries("Latency", ["2026-03-02"], [null], String)).toBe("Latency: no data in these 1 days.");
  });
});

describe("the figures in words", () => {
  it("says bytes in decimal units", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(999)).toBe("999 B");
    expect(formatBytes(1_500)).toBe("1.5 KB");
    expect(formatBytes(12_300_000)).toBe("12 MB");
    expect(formatBytes(3_210_000_000)).toBe("3.2 GB");
  });

  it("says a latency at a glance", () => {
    expect(formatLatency(null)).toBe("none delivered");
    expect(formatLatency(0.44)).toBe("440 ms");
    expect(formatLatency(2.46)).toBe("2.5 s");
    expect(formatLatency(42)).toBe("42 s");
    expect(formatLatency(185)).toBe("3 min 5 s");
    expect(formatLatency(7800)).toBe("2 h 10 min");
  });
});

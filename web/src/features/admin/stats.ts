// The statistics (docs/api.md, GET /admin/stats): the date range, the call, and the API's days
// shaped for the page's charts and tables (series per day, failure reasons, per-target totals).
import { queryOptions } from "@tanstack/react-query";
import { api, data, type Schemas } from "../../lib/api/client";
import { messageOf } from "../../lib/api/errors";

export type DayStats = Schemas["DayStats"];

export interface StatsRange {
  /** YYYY-MM-DD, UTC days, both included (the API's `from` and `to`). */
  from: string;
  to: string;
}

/** The API's longest range. */
export const MAX_DAYS = 366;
const DAY_MS = 86_400_000;
const DATE = /^\d{4}-\d{2}-\d{2}$/;

function isoDay(time: number): string {
  return new Date(time).toISOString().slice(0, 10);
}

/** The last `days` UTC days up to today, today included (the page's default: 30). */
export function lastDays(now: Date, days = 30): StatsRange {
  const today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
  return { from: isoDay(today - (days - 1) * DAY_MS), to: isoDay(today) };
}

/** Why the range cannot be asked for (the API's own rule, checked before asking), or null. */
export function rangeProblem(range: StatsRange): string | null {
  if (!DATE.test(range.from) || !DATE.test(range.to)) return "Choose both dates.";
  const from = Date.parse(`${range.from}T00:00:00Z`);
  const to = Date.parse(`${range.to}T00:00:00Z`);
  if (Number.isNaN(from) || Number.isNaN(to)) return "Choose both dates.";
  if (from > to) return "The start must not be after the end.";
  if ((to - from) / DAY_MS + 1 > MAX_DAYS) return `Choose at most ${MAX_DAYS} days.`;
  return null;
}

export function statsOptions(range: StatsRange) {
  return queryOptions({
    queryKey: ["admin", "stats", range.from, range.to],
    queryFn: () => data(api.GET("/api/v1/admin/stats", { params: { query: { from: range.from, to: range.to } } })),
  });
}

/** One column per day, oldest first: what the time charts draw and their tables list. */
export interface DailySeries {
  days: string[];
  uploads: number[];
  bytes: number[];
  delivered: number[];
  p50: (number | null)[];
  p95: (number | null)[];
}

export function dailySeries(days: readonly DayStats[]): DailySeries {
  return {
    days: days.map((d) => d.day),
    uploads: days.map((d) => d.uploads),
    bytes: days.map((d) => d.bytes),
    delivered: days.map((d) => d.delivered),
    p50: days.map((d) => d.latency_p50_seconds),
    p95: days.map((d) => d.latency_p95_seconds),
  };
}

export interface Totals {
  uploads: number;
  bytes: number;
  instances: number;
  delivered: number;
  refusedFiles: number;
}

function sum(values: Iterable<number>): number {
  let total = 0;
  for (const value of values) total += value;
  return total;
}

export function totals(days: readonly DayStats[]): Totals {
  return {
    uploads: sum(days.map((d) => d.uploads)),
    bytes: sum(days.map((d) => d.bytes)),
    instances: sum(days.map((d) => d.instances)),
    delivered: sum(days.map((d) => d.delivered)),
    refusedFiles: sum(days.flatMap((d) => Object.values(d.failures))),
  };
}

export interface FailureReason {
  code: string;
  count: number;
  /** The app's sentence for the code (lib/api/errors.ts), null when it has none. */
  message: string | null;
}

/** The refused files of the range by error code, most frequent first (then by code). */
export function failureReasons(days: readonly DayStats[]): FailureReason[] {
  const counts = new Map<string, number>();
  for (const day of days) {
    for (const [code, count] of Object.entries(day.failures)) counts.set(code, (counts.get(code) ?? 0) + count);
  }
  return [...counts]
    .filter(([, count]) => count > 0)
    .map(([code, count]) => ({ code, count, message: messageOf(code) }))
    .sort((a, b) => b.count - a.count || a.code.localeCompare(b.code));
}

export interface TargetTotals extends Totals {
  target: string;
  /** The highest daily P50 and P95 of the range (percentiles of different days do not add
   * up), null when nothing was delivered to the target. */
  worstP50: number | null;
  worstP95: number | null;
}

function worst(values: (number | null)[]): number | null {
  const known = values.filter((v): v is number => v !== null);
  return known.length ? Math.max(...known) : null;
}

/** Each target's figures over the range, by target name. */
export function targetTotals(days: readonly DayStats[]): TargetTotals[] {
  const byTarget = new Map<string, Schemas["TargetFigures"][]>();
  for (const day of days) {
    for (const figures of day.targets) byTarget.set(figures.target, [...(byTarget.get(figures.target) ?? []), figures]);
  }
  return [...byTarget]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([target, rows]) => ({
      target,
      uploads: sum(rows.map((r) => r.uploads)),
      bytes: sum(rows.map((r) => r.bytes)),
      instances: sum(rows.map((r) => r.instances)),
      delivered: sum(rows.map((r) => r.delivered)),
      refusedFiles: sum(rows.flatMap((r) => Object.values(r.failures))),
      worstP50: worst(rows.map((r) => r.latency_p50_seconds)),
      worstP95: worst(rows.map((r) => r.latency_p95_seconds)),
    }));
}

/** "0 B", "512 B", "1.5 KB", "12 MB", "3.2 GB" (decimal units, as disks are sold). */
export function formatBytes(bytes: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const shown = unit === 0 || value >= 10 ? Math.round(value).toString() : value.toFixed(1);
  return `${shown} ${units[unit]}`;
}

/** A latency in words: "440 ms", "2.5 s", "42 s", "3 min 5 s", "2 h 10 min"; "none delivered"
 * for null. */
export function formatLatency(seconds: number | null): string {
  if (seconds === null) return "none delivered";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 10) return `${Math.round(seconds * 10) / 10} s`;
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const minutes = Math.floor(s / 60);
  if (minutes < 60) return s % 60 ? `${minutes} min ${s % 60} s` : `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
}

/** A one-sentence summary of a daily series, for the chart's accessible name. */
export function describeSeries(label: string, days: readonly string[], values: readonly (number | null)[], format: (v: number) => string): string {
  const known = values.map((v, i) => [v, days[i]] as const).filter((p): p is readonly [number, string] => p[0] !== null);
  if (known.length === 0) return `${label}: no data in these ${days.length} days.`;
  const [peak, peakDay] = known.reduce((best, p) => (p[0] > best[0] ? p : best));
  return `${label}, ${days.length} days from ${days[0]} to ${days[days.length - 1]}: highest ${format(peak)} on ${peakDay}. The table below lists every day.`;
}

// The administrator's statistics: for a range of UTC days (the last 30 by default), uploads and
// bytes per day, the delivery latency (P50/P95) per day, the reasons files were refused, and
// the figures of each PACS target. Each chart has its table; loaded on demand (uPlot).
import { useQuery } from "@tanstack/react-query";
import { useEffect, useMemo, useRef, useState, type ReactNode } from "react";
import { Alert, Card, Field, SecondaryButton } from "../../components/ui";
import { describeError } from "../../lib/api/errors";
import {
  dailySeries,
  describeSeries,
  failureReasons,
  formatBytes,
  formatLatency,
  lastDays,
  rangeProblem,
  statsOptions,
  targetTotals,
  totals,
  type DailySeries,
  type StatsRange,
} from "./stats";
import { TimeChart, type ChartSeries } from "./time-chart";

const count = (value: number) => Math.round(value).toLocaleString("en");
const seconds = (value: number) => formatLatency(value);

export function StatsPage() {
  const [range, setRange] = useState<StatsRange>(() => lastDays(new Date()));
  const problem = rangeProblem(range);
  const stats = useQuery({ ...statsOptions(range), enabled: problem === null });
  const days = stats.data?.days;
  const series = useMemo(() => (days ? dailySeries(days) : null), [days]);
  const sums = days ? totals(days) : null;

  return (
    <div className="flex flex-col gap-4">
      <h1 className="text-2xl font-semibold">Statistics</h1>
      <form aria-label="Date range" className="flex flex-wrap items-end gap-3" onSubmit={(e) => e.preventDefault()}>
        <Field label="From (UTC day)" type="date" value={range.from} onChange={(e) => setRange({ ...range, from: e.target.value })} />
        <Field label="To (UTC day)" type="date" value={range.to} onChange={(e) => setRange({ ...range, to: e.target.value })} />
        <SecondaryButton onClick={() => setRange(lastDays(new Date(), 7))}>Last 7 days</SecondaryButton>
        <SecondaryButton onClick={() => setRange(lastDays(new Date(), 30))}>Last 30 days</SecondaryButton>
        <SecondaryButton onClick={() => void stats.refetch()} disabled={problem !== null || stats.isFetching}>
          {stats.isFetching ? "Loading…" : "Refresh"}
        </SecondaryButton>
      </form>
      <p role="status" className="text-sm text-slate-700">
        {problem === null && stats.isPending ? "Loading the statistics…" : ""}
      </p>
      {problem && <Alert>{problem}</Alert>}
      {problem === null && stats.error && <Alert>{describeError(stats.error)}</Alert>}
      {/* After a failed read, no figure (an older answer would pass for this range's). */}
      {problem === null && !stats.error && sums && series && days && (
        <>
          <Card>
            <h2 className="text-lg font-semibold">In these {days.length} days</h2>
            <dl data-testid="stats-totals" className="mt-2 grid grid-cols-2 gap-x-4 gap-y-1 sm:grid-cols-[max-content_1fr]">
              <dt className="font-medium">Uploads</dt>
              <dd data-testid="total-uploads">{count(sums.uploads)}</dd>
              <dt className="font-medium">Bytes</dt>
              <dd data-testid="total-bytes">{formatBytes(sums.bytes)}</dd>
              <dt className="font-medium">Images accepted</dt>
              <dd data-testid="total-instances">{count(sums.instances)}</dd>
              <dt className="font-medium">Delivered (PACS confirmed)</dt>
              <dd data-testid="total-delivered">{count(sums.delivered)}</dd>
              <dt className="font-medium">Files refused</dt>
              <dd data-testid="total-refused">{count(sums.refusedFiles)}</dd>
            </dl>
            {sums.uploads === 0 && <p className="mt-2">No upload was started in these days.</p>}
          </Card>
          <DailyCharts series={series} />
          <FailureCard days={days} />
          <TargetCard days={days} />
        </>
      )}
    </div>
  );
}

function Section({ title, id, children }: { title: string; id: string; children: ReactNode }) {
  return (
    <Card>
      <div role="group" aria-labelledby={id} className="flex flex-col gap-3">
        <h2 id={id} className="text-lg font-semibold">
          {title}
        </h2>
        {children}
      </div>
    </Card>
  );
}

function DailyCharts({ series }: { series: DailySeries }) {
  const uploads = useMemo<ChartSeries[]>(() => [{ label: "Uploads", values: series.uploads, color: "#1e40af", kind: "bars" }], [series]);
  const bytes = useMemo<ChartSeries[]>(() => [{ label: "Bytes", values: series.bytes, color: "#0f766e", kind: "bars" }], [series]);
  const latency = useMemo<ChartSeries[]>(
    () => [
      { label: "P50 (median)", values: series.p50, color: "#1e40af", kind: "line" },
      { label: "P95", values: series.p95, color: "#b45309", kind: "line" },
    ],
    [series],
  );
  return (
    <>
      <Section title="Uploads per day" id="chart-uploads">
        <TimeChart summary={describeSeries("Uploads per day", series.days, series.uploads, count)} days={series.days} series={uploads} format={count} />
        <DayTable
          caption="Uploads per day"
          testId="uploads-table"
          days={series.days}
          columns={[
            { label: "Uploads", values: series.uploads, format: count },
            { label: "Delivered", values: series.delivered, format: count },
          ]}
        />
      </Section>
      <Section title="Bytes per day" id="chart-bytes">
        <TimeChart summary={describeSeries("Bytes per day", series.days, series.bytes, formatBytes)} days={series.days} series={bytes} format={formatBytes} />
        <DayTable caption="Bytes per day" testId="bytes-table" days={series.days} columns={[{ label: "Bytes", values: series.bytes, format: formatBytes }]} />
      </Section>
      <Section title="Delivery latency per day (complete to PACS confirmed)" id="chart-latency">
        <TimeChart summary={describeSeries("Delivery latency P95 per day", series.days, series.p95, seconds)} days={series.days} series={latency} format={seconds} />
        <DayTable
          caption="Delivery latency per day"
          testId="latency-table"
          days={series.days}
          columns={[
            { label: "P50", values: series.p50, format: seconds },
            { label: "P95", values: series.p95, format: seconds },
          ]}
        />
      </Section>
    </>
  );
}

interface Column {
  label: string;
  values: readonly (number | null)[];
  format: (value: number) => string;
}

/** The chart's figures as a table, folded (keyboard: the summary opens it). */
function DayTable({ caption, testId, days, columns }: { caption: string; testId: string; days: readonly string[]; columns: Column[] }) {
  return (
    <details>
      <summary className="cursor-pointer text-blue-900 underline">Table: {caption.toLowerCase()}</summary>
      {/* Scrolls when long: focusable, so the keyboard scrolls it too. */}
      <div className="mt-2 max-h-80 overflow-auto" tabIndex={0} role="region" aria-label={`${caption}, every day`}>
        <table data-testid={testId} className="w-full border-collapse text-left text-sm">
          <caption className="sr-only">{caption}</caption>
          <thead>
            <tr className="border-b border-slate-300">
              <th scope="col" className="py-1 pr-3">
                Day (UTC)
              </th>
              {columns.map((c) => (
                <th key={c.label} scope="col" className="py-1 pr-3 text-right">
                  {c.label}
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {days.map((day, i) => (
              <tr key={day} data-day={day} className="border-b border-slate-100">
                <th scope="row" className="py-1 pr-3 font-normal">
                  {day}
                </th>
                {columns.map((c) => {
                  const value = c.values[i] ?? null;
                  return (
                    <td key={c.label} data-value={value ?? ""} className="py-1 pr-3 text-right">
                      {value === null ? "–" : c.format(value)}
                    </td>
                  );
                })}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </details>
  );
}

function FailureCard({ days }: { days: Parameters<typeof failureReasons>[0] }) {
  const reasons = failureReasons(days);
  const most = reasons[0]?.count ?? 0;
  return (
    <Section title="Why files were refused" id="chart-failures">
      {reasons.length === 0 ? (
        <p>No file was refused in these days.</p>
      ) : (
        <table data-testid="failures-table" className="w-full border-collapse text-left text-sm">
          <caption className="sr-only">Refused files by reason, most frequent first</caption>
          <thead>
            <tr className="border-b border-slate-300">
              <th scope="col" className="py-1 pr-3">
                Reason
              </th>
              <th scope="col" className="py-1 pr-3 text-right">
                Files
              </th>
              <th scope="col" className="w-1/3 py-1">
                <span className="sr-only">Share</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {reasons.map((reason) => (
              <tr key={reason.code} data-code={reason.code} data-count={reason.count} className="border-b border-slate-100">
                <th scope="row" className="py-1 pr-3 font-normal">
                  {reason.message ?? reason.code} <code className="text-xs text-slate-700">{reason.code}</code>
                </th>
                <td className="py-1 pr-3 text-right">{count(reason.count)}</td>
                <td className="py-1" aria-hidden="true">
                  <Bar share={most ? reason.count / most : 0} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Section>
  );
}

function Bar({ share }: { share: number }) {
  const ref = useRef<HTMLSpanElement>(null);
  useEffect(() => {
    if (ref.current) ref.current.style.width = `${Math.round(share * 100)}%`;
  }, [share]);
  return <span ref={ref} className="block h-3 rounded-sm bg-red-700" />;
}

function TargetCard({ days }: { days: Parameters<typeof targetTotals>[0] }) {
  const targets = targetTotals(days);
  return (
    <Section title="Per PACS target" id="chart-targets">
      {targets.length === 0 ? (
        <p>No upload was queued for a PACS target in these days.</p>
      ) : (
        <div className="overflow-x-auto">
          <table data-testid="targets-table" className="w-full border-collapse text-left text-sm">
            <caption className="sr-only">Figures of each PACS target over the range</caption>
            <thead>
              <tr className="border-b border-slate-300">
                {["Target", "Uploads", "Bytes", "Images", "Delivered", "Files refused", "Highest daily P50", "Highest daily P95"].map((h) => (
                  <th key={h} scope="col" className="py-1 pr-3">
                    {h}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {targets.map((t) => (
                <tr key={t.target} data-target={t.target} className="border-b border-slate-100">
                  <th scope="row" className="py-1 pr-3">
                    {t.target}
                  </th>
                  <td data-testid="target-uploads" className="py-1 pr-3">
                    {count(t.uploads)}
                  </td>
                  <td className="py-1 pr-3">{formatBytes(t.bytes)}</td>
                  <td className="py-1 pr-3">{count(t.instances)}</td>
                  <td data-testid="target-delivered" className="py-1 pr-3">
                    {count(t.delivered)}
                  </td>
                  <td className="py-1 pr-3">{count(t.refusedFiles)}</td>
                  <td className="py-1 pr-3">{formatLatency(t.worstP50)}</td>
                  <td className="py-1 pr-3">{formatLatency(t.worstP95)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </Section>
  );
}

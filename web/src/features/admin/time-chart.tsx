// A chart of values per day, drawn by uPlot (a small canvas chart library) as bars or lines. The
// canvas is one image with a summary as its accessible name; the caller puts the table of the
// same figures next to it, for screen readers and for anyone who wants the numbers.
import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface ChartSeries {
  label: string;
  values: readonly (number | null)[];
  /** A CSS colour (the legend's swatch is the same). */
  color: string;
  kind: "bars" | "line";
}

const HEIGHT = 220;

function dayStart(day: string): number {
  return Date.parse(`${day}T00:00:00Z`) / 1000;
}

export function TimeChart({
  summary,
  days,
  series,
  format,
}: {
  summary: string;
  days: readonly string[];
  series: readonly ChartSeries[];
  format: (value: number) => string;
}) {
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const element = box.current;
    if (!element) return;
    const bars = uPlot.paths.bars?.({ size: [0.7, 40] });
    const options: uPlot.Options = {
      width: Math.max(element.clientWidth, 200),
      height: HEIGHT,
      legend: { show: false }, // the page's own legend and table say it in text
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: (_u, min, max) => [min - 43_200, max + 43_200] }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      // Days are UTC days: the axis says them in UTC too.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      axes: [
        { stroke: "#334155", grid: { stroke: "#e2e8f0" } },
        { stroke: "#334155", grid: { stroke: "#e2e8f0" }, size: 70, values: (_u, ticks) => ticks.map((t) => format(t)) },
      ],
      series: [
        {},
        ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: s.kind === "line" ? 2 : 1,
          fill: s.kind === "bars" ? s.color : undefined,
          paths: s.kind === "bars" ? bars : undefined,
          points: { show: s.kind === "line" },
          spanGaps: false,
        })),
      ],
    };
    const data: uPlot.AlignedData = [days.map(dayStart), ...series.map((s) => [...s.values])];
    const plot = new uPlot(options, data, element);
    const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(element.clientWidth, 200), height: HEIGHT }));
    resize.observe(element);
    return () => {
      resize.disconnect();
      plot.destroy();
    };
  }, [days, series, format]);

  return (
    <div className="flex flex-col gap-2">
      <div ref={box} role="img" aria-label={summary} className="w-full overflow-hidden" />
      <ul className="flex flex-wrap gap-4 text-sm" aria-hidden="true">
        {series.map((s) => (
          <li key={s.label} className="flex items-center gap-2">
            <Swatch color={s.color} />
            {s.label}
          </li>
        ))}
      </ul>
    </div>
  );
}

function Swatch({ color }: { color: string }) {
  const ref = useRef<HTMLSpanElement>(null);
  // Set through the DOM (the page's CSP allows no inline style attribute).
  useEffect(() => {
    if (ref.current) ref.current.style.backgroundColor = color;
  }, [color]);
  return <span ref={ref} className="inline-block h-3 w-3 rounded-sm" />;
}

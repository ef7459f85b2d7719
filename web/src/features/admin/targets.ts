// The PACS targets and their health (docs/api.md, GET /admin/targets): the call, and how the
// page says a target's state and an age in words.
import { queryOptions } from "@tanstack/react-query";
import { api, data, type Schemas } from "../../lib/api/client";

export type TargetHealth = Schemas["TargetHealth"];

export function targetsOptions(live: boolean) {
  return queryOptions({
    queryKey: ["admin", "targets"],
    queryFn: () => data(api.GET("/api/v1/admin/targets")),
    // Each read probes every PACS: not more often than an administrator would look.
    refetchInterval: live ? 30_000 : 15_000,
  });
}

/** "45 s", "12 min", "3 h 5 min", "2 d 4 h": how long, at a glance. */
export function formatAge(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const minutes = Math.floor(s / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
  const days = Math.floor(hours / 24);
  return hours % 24 ? `${days} d ${hours % 24} h` : `${days} d`;
}

export const BREAKER: Record<TargetHealth["breaker"], string> = {
  closed: "Closed (sending)",
  open: "Open (paused after failures)",
  half_open: "Half open (trying one request)",
  not_running: "No forwarding worker in this process",
};

/** The target's state in one word: what the administrator must look at first. */
export function targetState(target: TargetHealth): "ok" | "degraded" | "down" {
  if (!target.reachable) return "down";
  if (target.breaker === "open" || target.retrying_jobs > 0) return "degraded";
  return "ok";
}

// The administrator's PACS targets: each configured target probed now (reachable, or why not),
// this gateway's circuit breaker for it, the studies waiting for it and since when, its last
// delivery and attempt. Refreshed on demand and every 15 to 30 s.
import { useQuery } from "@tanstack/react-query";
import { Alert, Button, Card } from "../../components/ui";
import { describeError } from "../../lib/api/errors";
import { useLiveConnected } from "../../lib/live-status";
import { BREAKER, formatAge, targetState, targetsOptions, type TargetHealth } from "./targets";

const STATE = {
  ok: { label: "Healthy", className: "border-green-700 bg-green-50 text-green-900" },
  degraded: { label: "Having trouble", className: "border-amber-700 bg-amber-50 text-amber-900" },
  down: { label: "Not reachable", className: "border-red-700 bg-red-50 text-red-900" },
} as const;

const OUTCOME: Record<NonNullable<TargetHealth["last_attempt_outcome"]>, string> = {
  delivered: "delivered",
  failed: "failed for good",
  retrying: "will retry",
};

function when(value: string | null): string {
  return value ? new Date(value).toLocaleString() : "never";
}

export function TargetsPage() {
  const live = useLiveConnected();
  const targets = useQuery(targetsOptions(live));
  return (
    <div className="flex flex-col gap-4">
      <div className="flex flex-wrap items-center gap-3">
        <h1 className="text-2xl font-semibold">PACS targets</h1>
        <span className="grow" />
        <Button onClick={() => void targets.refetch()} disabled={targets.isFetching}>
          {targets.isFetching ? "Checking…" : "Check now"}
        </Button>
      </div>
      <p role="status" className="text-sm text-slate-700">
        {targets.data ? `Checked at ${new Date(targets.data.checked_at).toLocaleTimeString()}` : targets.isPending ? "Checking the targets…" : ""}
      </p>
      {targets.error && <Alert>{describeError(targets.error)}</Alert>}
      {targets.data?.items.length === 0 && <p>No PACS target is configured: accepted studies wait in the queue.</p>}
      <ul aria-label="PACS targets" className="flex flex-col gap-3">
        {targets.data?.items.map((target) => (
          <li key={target.name}>
            <TargetCard target={target} />
          </li>
        ))}
      </ul>
    </div>
  );
}

function TargetCard({ target }: { target: TargetHealth }) {
  const state = targetState(target);
  const headingId = `target-${target.name}`;
  return (
    <Card>
      <div data-testid="target" data-name={target.name} data-state={state} aria-labelledby={headingId} role="group">
        <div className="flex flex-wrap items-center gap-2">
          <h2 id={headingId} className="text-lg font-semibold">
            {target.name}
          </h2>
          {target.default && <span className="rounded border border-slate-400 px-2 text-sm">new studies go here</span>}
          <span data-testid="target-state" className={`rounded border px-2 text-sm font-medium ${STATE[state].className}`}>
            {STATE[state].label}
          </span>
        </div>
        <p className="break-all text-sm text-slate-700">
          {target.url} · {target.profile}
        </p>
        <dl className="mt-2 grid grid-cols-1 gap-x-4 gap-y-1 sm:grid-cols-[max-content_1fr]">
          <dt className="font-medium">Reachable</dt>
          <dd data-testid="target-reachable">{target.reachable ? "Yes" : `No: ${target.probe_error ?? "no answer"}`}</dd>
          <dt className="font-medium">Circuit breaker</dt>
          <dd data-testid="target-breaker" data-breaker={target.breaker}>
            {BREAKER[target.breaker]}
            {target.breaker_retry_seconds !== null && ` · next try in ${formatAge(target.breaker_retry_seconds)}`}
          </dd>
          <dt className="font-medium">Studies waiting</dt>
          <dd data-testid="target-queue">
            {target.queued_jobs}
            {target.retrying_jobs > 0 && ` (${target.retrying_jobs} after a failed attempt)`}
          </dd>
          <dt className="font-medium">Oldest waiting</dt>
          <dd>{target.oldest_job_age_seconds === null ? "nothing waits" : formatAge(target.oldest_job_age_seconds)}</dd>
          <dt className="font-medium">Last delivery</dt>
          <dd data-testid="target-last-delivery">{when(target.last_delivered_at)}</dd>
          <dt className="font-medium">Last attempt</dt>
          <dd>{target.last_attempt_outcome ? `${OUTCOME[target.last_attempt_outcome]}, ${when(target.last_attempt_at)}` : "none yet"}</dd>
          {target.last_error && (
            <>
              <dt className="font-medium">Last error</dt>
              <dd className="break-words">{target.last_error}</dd>
            </>
          )}
        </dl>
      </div>
    </Card>
  );
}

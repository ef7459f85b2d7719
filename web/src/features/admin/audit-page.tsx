// The administrator's audit log: search by action, outcome, user, study and time, newest first
// a page at a time; export every matching record as CSV or JSON lines.
import { useQuery } from "@tanstack/react-query";
import { useId, useState, type ChangeEvent } from "react";
import { Alert, Field, SecondaryButton } from "../../components/ui";
import { describeError } from "../../lib/api/errors";
import { auditPage, auditQuery, exportAudit, NO_AUDIT_FILTERS, type AuditFilters } from "./audit";

export function AuditPage() {
  const [filters, setFilters] = useState<AuditFilters>(NO_AUDIT_FILTERS);
  // The pages seen so far (their `before` cursors), to go back to newer ones.
  const [cursors, setCursors] = useState<(number | null)[]>([null]);
  const [error, setError] = useState<string | null>(null);
  const query = auditQuery(filters);
  const before = cursors[cursors.length - 1] ?? null;
  const records = useQuery({
    queryKey: ["admin", "audit", query, before],
    queryFn: () => auditPage(query, before),
  });
  const outcomeId = useId();
  const set = (key: keyof AuditFilters) => (event: ChangeEvent<HTMLInputElement | HTMLSelectElement>) => {
    setFilters({ ...filters, [key]: event.target.value });
    setCursors([null]);
  };
  const download = (format: "csv" | "jsonl") =>
    exportAudit(query, format).then(
      () => setError(null),
      (e: unknown) => setError(describeError(e)),
    );

  return (
    <div className="flex flex-col gap-4">
      <h1 className="text-2xl font-semibold">Audit log</h1>
      <form role="search" aria-label="Search the audit log" className="grid grid-cols-1 gap-3 sm:grid-cols-3" onSubmit={(e) => e.preventDefault()}>
        <Field label="Action" value={filters.action} onChange={set("action")} placeholder="report.sign" />
        <div className="flex flex-col gap-1">
          <label htmlFor={outcomeId} className="text-sm font-medium">
            Outcome
          </label>
          <select id={outcomeId} className="rounded-md border border-slate-400 bg-white px-3 py-2" value={filters.outcome} onChange={set("outcome")}>
            <option value="">Any</option>
            <option value="success">Success</option>
            <option value="failure">Failure</option>
            <option value="denied">Denied</option>
          </select>
        </div>
        <Field label="User id" value={filters.actorId} onChange={set("actorId")} />
        <Field label="StudyInstanceUID" value={filters.study} onChange={set("study")} />
        <Field label="From" type="datetime-local" value={filters.since} onChange={set("since")} />
        <Field label="Until" type="datetime-local" value={filters.until} onChange={set("until")} />
      </form>
      <div className="flex flex-wrap gap-2">
        <SecondaryButton onClick={() => void download("csv")}>Export CSV</SecondaryButton>
        <SecondaryButton onClick={() => void download("jsonl")}>Export JSON lines</SecondaryButton>
      </div>
      {error && <Alert>{error}</Alert>}
      {records.error && <Alert>{describeError(records.error)}</Alert>}
      {records.data && (
        <div className="overflow-x-auto">
          <table className="w-full border-collapse bg-white text-left text-sm">
            <caption className="sr-only">Audit records, newest first</caption>
            <thead>
              <tr className="border-b border-slate-300">
                <th scope="col" className="p-2">
                  Time
                </th>
                <th scope="col" className="p-2">
                  Action
                </th>
                <th scope="col" className="p-2">
                  Outcome
                </th>
                <th scope="col" className="p-2">
                  User
                </th>
                <th scope="col" className="p-2">
                  Object
                </th>
              </tr>
            </thead>
            <tbody>
              {records.data.items.map((record) => (
                <tr key={record.id} className="border-b border-slate-200" data-testid="audit-row">
                  <td className="p-2 whitespace-nowrap">
                    <time dateTime={record.at}>{new Date(record.at).toLocaleString()}</time>
                  </td>
                  <td className="p-2">{record.action}</td>
                  <td className="p-2">{record.outcome}</td>
                  <td className="p-2 break-all">
                    {record.actor_role ?? ""} {record.actor_id ?? ""}
                  </td>
                  <td className="p-2 break-all">{[record.object_type, record.object_id].filter(Boolean).join(" ")}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {records.data.items.length === 0 && <p className="p-2">No record matches.</p>}
        </div>
      )}
      <div className="flex gap-2">
        <SecondaryButton disabled={cursors.length < 2} onClick={() => setCursors(cursors.slice(0, -1))}>
          Newer
        </SecondaryButton>
        <SecondaryButton
          disabled={records.data?.next_before == null}
          onClick={() => records.data?.next_before != null && setCursors([...cursors, records.data.next_before])}
        >
          Older
        </SecondaryButton>
      </div>
    </div>
  );
}

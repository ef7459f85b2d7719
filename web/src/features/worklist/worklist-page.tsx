// The radiologist's worklist: the reports assigned to them, oldest first, with filters. The
// live stream refreshes it when a study is assigned (no reload).
import { useQuery } from "@tanstack/react-query";
import { useId, useState, type ChangeEvent } from "react";
import { Link } from "react-router";
import { Alert, Field, SecondaryButton } from "../../components/ui";
import { describeError } from "../../lib/api/errors";
import { formatDicomDate, formatPersonName } from "../../lib/format";
import { useLiveConnected } from "../../lib/live-status";
import { NO_FILTERS, PAGE_SIZE, pageRange, worklistOptions, type WorklistFilters } from "./api";
import { REPORT_STATUS } from "./format";

export function WorklistPage() {
  const live = useLiveConnected();
  const [filters, setFilters] = useState<WorklistFilters>(NO_FILTERS);
  const [page, setPage] = useState(0);
  const worklist = useQuery(worklistOptions(filters, page, live));
  const statusId = useId();
  const set = (key: keyof WorklistFilters) => (event: ChangeEvent<HTMLInputElement | HTMLSelectElement>) => {
    setFilters({ ...filters, [key]: event.target.value });
    setPage(0);
  };
  const total = worklist.data?.total ?? 0;
  return (
    <div className="flex flex-col gap-4">
      <h1 className="text-2xl font-semibold">Worklist</h1>
      <form role="search" aria-label="Filter the worklist" className="grid grid-cols-1 gap-3 sm:grid-cols-2 lg:grid-cols-5" onSubmit={(e) => e.preventDefault()}>
        <div className="flex flex-col gap-1">
          <label htmlFor={statusId} className="text-sm font-medium">
            Status
          </label>
          <select id={statusId} className="rounded-md border border-slate-400 bg-white px-3 py-2" value={filters.status} onChange={set("status")}>
            <option value="">Any</option>
            <option value="assigned">To report</option>
            <option value="ready">Signed</option>
            <option value="amended">Amended</option>
          </select>
        </div>
        <Field label="Modality" value={filters.modality} onChange={set("modality")} placeholder="CT, MR…" />
        <Field label="Opened from" type="date" value={filters.dateFrom} onChange={set("dateFrom")} />
        <Field label="Opened until" type="date" value={filters.dateTo} onChange={set("dateTo")} />
        <Field label="Search" type="search" value={filters.text} onChange={set("text")} placeholder="Patient, accession…" />
      </form>
      {worklist.error && <Alert>{describeError(worklist.error)}</Alert>}
      {worklist.data && (
        <p role="status" className="text-sm text-slate-700">
          {pageRange(page, PAGE_SIZE, worklist.data.total)}
        </p>
      )}
      <ul aria-label="Worklist" className="flex flex-col gap-2">
        {worklist.data?.items.map((report) => (
          <li key={report.id} data-testid="worklist-item" data-status={report.status}>
            <Link
              to={`/worklist/${report.id}`}
              className="flex flex-wrap items-baseline justify-between gap-2 rounded-lg border border-slate-200 bg-white p-3 shadow-sm hover:bg-blue-50 focus:outline-2 focus:outline-blue-800"
            >
              <span className="font-medium">
                {formatPersonName(report.metadata.patient_name)}
                {report.metadata.patient_id ? ` (${report.metadata.patient_id})` : ""}
              </span>
              <span className="text-slate-800">
                {[report.modality, formatDicomDate(report.study_date), report.metadata.study_description].filter(Boolean).join(" · ")}
              </span>
              <span className="text-sm text-slate-700">
                {REPORT_STATUS[report.status]}
                {report.assigned_at ? ` · assigned ${new Date(report.assigned_at).toLocaleString()}` : ""}
              </span>
            </Link>
          </li>
        ))}
      </ul>
      {total > PAGE_SIZE && (
        <div className="flex gap-2">
          <SecondaryButton disabled={page === 0} onClick={() => setPage(page - 1)}>
            Previous page
          </SecondaryButton>
          <SecondaryButton disabled={(page + 1) * PAGE_SIZE >= total} onClick={() => setPage(page + 1)}>
            Next page
          </SecondaryButton>
        </div>
      )}
    </div>
  );
}

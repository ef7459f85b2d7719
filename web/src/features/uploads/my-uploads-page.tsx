// My uploads: every study the clinician sent, its state at the gateway and at the PACS.
import { useQuery } from "@tanstack/react-query";
import { useState } from "react";
import { Alert, Card, SecondaryButton } from "../../components/ui";
import type { Schemas, UploadSummary } from "../../lib/api/client";

type ReportSummary = Schemas["ReportSummary"];
import { describeError } from "../../lib/api/errors";
import { useLiveConnected } from "../../lib/live-status";
import { downloadReportPdf } from "../../lib/report-pdf";
import { stepLabel } from "./timeline-steps";
import { myReportsQuery, myUploadsQuery, reportQuery, uploadFilesQuery, uploadStatusQuery, uploadTimelineQuery } from "./api";

const STATUS: Record<string, string> = {
  pending: "Uploading",
  received: "Received, being checked",
  validated: "Checked",
  rejected: "Refused",
  queued: "Waiting for the PACS",
  forwarding: "Sending to the PACS",
  delivered: "Delivered",
  failed: "PACS delivery failed",
  cancelled: "Cancelled",
  expired: "Expired (abandoned)",
};

function formatDate(value: string | null | undefined): string {
  if (!value) return "";
  const d = /^(\d{4})(\d{2})(\d{2})$/.exec(value);
  return d ? `${d[1]}-${d[2]}-${d[3]}` : value;
}

export function MyUploadsPage() {
  const live = useLiveConnected();
  const uploads = useQuery(myUploadsQuery(live));
  const reports = useQuery(myReportsQuery(live));
  const reportOf = new Map((reports.data?.items ?? []).map((r) => [r.upload_id, r]));
  return (
    <div className="flex flex-col gap-4">
      <h1 className="text-2xl font-semibold">My uploads</h1>
      {uploads.error && <Alert>{describeError(uploads.error)}</Alert>}
      {uploads.data?.items.length === 0 && <p>No upload yet.</p>}
      <ul className="flex flex-col gap-3" aria-label="Uploads">
        {uploads.data?.items.map((upload) => (
          <li key={upload.id}>
            <UploadRow upload={upload} report={reportOf.get(upload.id)} />
          </li>
        ))}
      </ul>
    </div>
  );
}

function UploadRow({ upload, report }: { upload: UploadSummary; report: ReportSummary | undefined }) {
  const live = useLiveConnected();
  const detail = useQuery(uploadStatusQuery(upload.id, upload.status, live));
  const current = detail.data ?? upload;
  const forwarding = detail.data?.forwarding;
  const total = current.instance_count ?? forwarding?.instances ?? null;
  const confirmed = current.status === "delivered" ? total : (forwarding?.confirmed ?? 0);
  const [showRefused, setShowRefused] = useState(false);
  const [showTimeline, setShowTimeline] = useState(false);
  const meta = current.metadata;
  return (
    <Card>
      <div className="flex flex-wrap items-baseline justify-between gap-2">
        <p className="font-medium">
          {meta?.patient_name?.split("^").join(", ") || "(no name)"} · {formatDate(meta?.study_date)} · {meta?.modality} · {meta?.study_description}
        </p>
        <p data-testid="upload-status" data-status={current.status}>
          {STATUS[current.status] ?? current.status}
        </p>
      </div>
      <p className="text-sm text-slate-700">
        {current.file_count} files · sent {new Date(current.created_at).toLocaleString()}
        {current.refused_files ? ` · accepted ${current.file_count - current.refused_files} of ${current.file_count}` : ""}
      </p>
      {total !== null && ["queued", "forwarding", "delivered", "failed"].includes(current.status) && (
        <p data-testid="pacs-confirmed" className="font-medium">
          PACS confirmed {confirmed}/{total}
        </p>
      )}
      <SecondaryButton className="mt-2 mr-2" onClick={() => setShowTimeline(!showTimeline)} aria-expanded={showTimeline}>
        {showTimeline ? "Hide timeline" : "Show timeline"}
      </SecondaryButton>
      {showTimeline && <Timeline id={upload.id} status={current.status} />}
      {forwarding?.last_error && current.status !== "delivered" && <p className="text-sm">Last PACS answer: {forwarding.last_error}</p>}
      {report && <ReportLine report={report} />}
      {(current.refused_files ?? 0) > 0 && (
        <SecondaryButton className="mt-2" onClick={() => setShowRefused(!showRefused)} aria-expanded={showRefused}>
          {showRefused ? "Hide refused files" : "Show refused files"}
        </SecondaryButton>
      )}
      {showRefused && <RefusedFiles id={upload.id} />}
    </Card>
  );
}

/** Every step of the study's journey with its time, from the gateway's record. */
function Timeline({ id, status }: { id: string; status: string }) {
  const timeline = useQuery({ ...uploadTimelineQuery(id), queryKey: ["upload", id, "timeline", status] });
  if (timeline.error) return <Alert>{describeError(timeline.error)}</Alert>;
  return (
    <ol aria-label="Timeline" className="mt-2 flex flex-col gap-1 border-l-2 border-slate-300 pl-3 text-sm">
      {(timeline.data?.steps ?? []).map((step, index) => (
        <li key={`${step.step}-${index}`}>
          <span className="font-medium">{stepLabel(step.step)}</span>{" "}
          <time dateTime={step.at} className="text-slate-700">
            {new Date(step.at).toLocaleString()}
          </time>
          {step.detail && <span className="block text-slate-700">{step.detail}</span>}
        </li>
      ))}
    </ol>
  );
}

const REPORT_STATUS: Record<string, string> = {
  pending: "Report: waiting for a radiologist",
  assigned: "Report: being written",
  ready: "Report ready",
  amended: "Report ready (amended)",
};

function ReportLine({ report }: { report: ReportSummary }) {
  const [open, setOpen] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const signed = report.status === "ready" || report.status === "amended";
  return (
    <div className="mt-2">
      <p data-testid="report-status" data-status={report.status} className="font-medium">
        {REPORT_STATUS[report.status] ?? report.status}
      </p>
      {signed && (
        <div className="mt-1 flex flex-wrap gap-2">
          <SecondaryButton onClick={() => setOpen(!open)} aria-expanded={open}>
            {open ? "Hide report" : "View report"}
          </SecondaryButton>
          <SecondaryButton onClick={() => downloadReportPdf(report.id).then(() => setError(null), (e: unknown) => setError(describeError(e)))}>
            Download PDF
          </SecondaryButton>
        </div>
      )}
      {error && <Alert>{error}</Alert>}
      {open && <ReportText id={report.id} />}
    </div>
  );
}

function ReportText({ id }: { id: string }) {
  const report = useQuery(reportQuery(id));
  const latest = report.data?.latest;
  if (report.error) return <Alert>{describeError(report.error)}</Alert>;
  if (!latest) return null;
  return (
    <article aria-label="Report" className="mt-2 rounded-md border border-slate-200 p-3 text-sm">
      <h3 className="font-semibold">Findings</h3>
      <p className="whitespace-pre-wrap">{latest.findings}</p>
      <h3 className="mt-2 font-semibold">Impression</h3>
      <p className="whitespace-pre-wrap">{latest.impression}</p>
      <p className="mt-2 text-slate-700">
        Version {latest.version}, {latest.source === "pacs" ? "from the PACS" : "signed"}{" "}
        {new Date(latest.signed_at).toLocaleString()}
        {latest.reason ? ` (amended: ${latest.reason})` : ""}
      </p>
    </article>
  );
}

function RefusedFiles({ id }: { id: string }) {
  const files = useQuery(uploadFilesQuery(id));
  const refused = files.data?.files?.filter((f) => f.error) ?? [];
  return (
    <ul className="mt-2 list-inside list-disc text-sm">
      {refused.map((f) => (
        <li key={f.index}>
          {f.name}: {f.error?.message}
        </li>
      ))}
    </ul>
  );
}

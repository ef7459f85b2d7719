// One report for its radiologist: the study (patient, series, "PACS confirmed N/N", the
// viewer), the editor (findings and impression, the draft saved as they type), signing, and
// once signed the PDF, the amendments with their reasons and every version. A draft not yet at
// the gateway is kept on this device (draft-store.ts): offline, a reload opens the editor with it.
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useId, useRef, useState, type TextareaHTMLAttributes } from "react";
import { Link, useParams } from "react-router";
import { Alert, Button, Card, Field, SecondaryButton } from "../../components/ui";
import type { Schemas } from "../../lib/api/client";
import { describeError } from "../../lib/api/errors";
import { db } from "../../lib/db";
import { formatDicomDate, formatPersonName } from "../../lib/format";
import { downloadReportPdf } from "../../lib/report-pdf";
import { amendReport, reportOptions, saveDraft, signReport, studyOptions, type ReportText } from "./api";
import { DraftSaver, type DraftState } from "./draft-saver";
import { draftAcknowledged, draftToOpen, forgetDraft, keepDraft, keptDraft, type DraftText } from "./draft-store";
import { isSigned, REPORT_STATUS } from "./format";

type Report = Schemas["ReportRead"];
const DRAFT_DELAY_MS = 800;

export function ReportPage() {
  const { reportId = "" } = useParams();
  const report = useQuery(reportOptions(reportId));
  // This device's unsent draft, if any (read once when the page opens).
  const kept = useQuery({
    queryKey: ["kept-draft", reportId],
    queryFn: async () => (await keptDraft(db, reportId)) ?? null,
    networkMode: "always",
    staleTime: Infinity,
    gcTime: 0,
  });
  const signed = report.data !== undefined && isSigned(report.data.status);
  const server: DraftText | null = report.data
    ? { findings: report.data.draft?.findings ?? "", impression: report.data.draft?.impression ?? "" }
    : null;
  // Offline (no answer from the gateway), the editor opens with the draft kept here, if any.
  const opening = kept.isSuccess && !signed && (report.data || kept.data) ? draftToOpen(kept.data ?? undefined, server) : null;
  // The kept draft read at opening, when the gateway has it already, or a newer one, or the
  // report is signed: gone (not a draft typed since).
  const outdated = kept.data && report.data !== undefined && (signed || opening?.unsent === false) ? kept.data.savedAt : null;
  useEffect(() => {
    if (outdated !== null) void forgetDraft(db, reportId, outdated);
  }, [outdated, reportId]);
  return (
    <div className="flex flex-col gap-4">
      <p>
        <Link to="/worklist" className="text-blue-800 underline">
          Back to the worklist
        </Link>
      </p>
      <h1 className="text-2xl font-semibold">Report</h1>
      {report.error && <Alert>{describeError(report.error)}</Alert>}
      <Study id={reportId} />
      {report.data && signed ? (
        <Signed report={report.data} />
      ) : (
        opening && <Editor key={reportId} reportId={reportId} opening={opening} />
      )}
    </div>
  );
}

function Study({ id }: { id: string }) {
  const study = useQuery(studyOptions(id));
  if (study.error) return <Alert>{describeError(study.error)}</Alert>;
  if (!study.data) return <p role="status">Loading the study…</p>;
  const { metadata: meta } = study.data;
  return (
    <Card>
      <h2 className="text-lg font-semibold">Study</h2>
      <dl className="mt-2 grid grid-cols-[max-content_1fr] gap-x-4 gap-y-1">
        <dt className="font-medium">Patient</dt>
        <dd data-testid="study-patient">
          {formatPersonName(meta.patient_name)}
          {meta.patient_id ? ` (${meta.patient_id})` : ""}
        </dd>
        <dt className="font-medium">Study</dt>
        <dd>{[meta.modality, formatDicomDate(meta.study_date), meta.study_description].filter(Boolean).join(" · ") || "—"}</dd>
        <dt className="font-medium">Accession</dt>
        <dd>{meta.accession_number || "—"}</dd>
        <dt className="font-medium">Contents</dt>
        <dd>
          {study.data.series_count} series, {study.data.instance_count} images
        </dd>
        <dt className="font-medium">PACS</dt>
        <dd data-testid="study-pacs-confirmed">{study.data.pacs_confirmed}</dd>
      </dl>
      <details className="mt-2">
        <summary className="cursor-pointer">Series</summary>
        <ul aria-label="Series" className="mt-1 list-inside list-disc text-sm">
          {study.data.series.map((s) => (
            <li key={s.series_instance_uid}>
              <span className="break-all">{s.series_instance_uid}</span>: {s.instances} images
            </li>
          ))}
        </ul>
      </details>
      {study.data.viewer_url && (
        <p className="mt-2">
          <a href={study.data.viewer_url} target="_blank" rel="noreferrer noopener" className="text-blue-800 underline">
            Open in the PACS viewer
          </a>
        </p>
      )}
    </Card>
  );
}

function TextArea({ label, ...props }: { label: string } & TextareaHTMLAttributes<HTMLTextAreaElement>) {
  const id = useId();
  return (
    <div className="flex flex-col gap-1">
      <label htmlFor={id} className="font-medium">
        {label}
      </label>
      <textarea id={id} rows={6} className="rounded-md border border-slate-400 bg-white px-3 py-2" {...props} />
    </div>
  );
}

const DRAFT_STATE: Record<DraftState, string> = {
  saved: "Draft saved",
  waiting: "Editing…",
  saving: "Saving the draft…",
  offline: "Offline: the draft is kept here and saved when the connection is back",
  failed: "The draft was not saved",
};

function Editor({ reportId, opening }: { reportId: string; opening: { text: DraftText; base: DraftText; unsent: boolean } }) {
  const queryClient = useQueryClient();
  const [text, setText] = useState<ReportText>(opening.text);
  const [draftState, setDraftState] = useState<DraftState>(opening.unsent ? "waiting" : "saved");
  const [error, setError] = useState<string | null>(null);
  const [signing, setSigning] = useState(false);
  const saver = useRef<DraftSaver<ReportText> | null>(null);
  // The gateway's draft as this page last knew it; and whether the last change is kept here.
  const base = useRef<DraftText>(opening.base);
  const kept = useRef(opening.unsent);
  const unsent = useRef(opening.unsent ? opening.text : null);

  useEffect(() => {
    const current = new DraftSaver<ReportText>({
      save: async (value) => {
        await saveDraft(reportId, value);
        base.current = value;
        await draftAcknowledged(db, reportId, value);
      },
      delayMs: DRAFT_DELAY_MS,
      onState: (state, cause) => {
        setDraftState(state);
        setError(state === "failed" ? describeError(cause) : null);
      },
    });
    saver.current = current;
    // The draft kept here at the last visit goes to the gateway (later, when offline).
    if (unsent.current) current.change(unsent.current);
    unsent.current = null;
    const online = () => current.retry();
    // Closing the tab with a draft neither at the gateway nor kept on this device: the browser
    // asks first.
    const leaving = (event: BeforeUnloadEvent) => {
      if (current.dirty && !kept.current) event.preventDefault();
    };
    window.addEventListener("online", online);
    window.addEventListener("beforeunload", leaving);
    return () => {
      window.removeEventListener("online", online);
      window.removeEventListener("beforeunload", leaving);
      void current.flush().finally(() => current.stop());
    };
  }, [reportId]);

  function change(next: DraftText) {
    setText(next);
    kept.current = false;
    // On this device first (a reload while offline keeps it), then to the gateway.
    void keepDraft(db, reportId, next, base.current).then(
      () => (kept.current = true),
      () => (kept.current = false),
    );
    saver.current?.change(next);
  }

  async function sign() {
    setSigning(true);
    setError(null);
    try {
      saver.current?.stop(); // the signature carries the text: no draft after it
      await signReport(reportId, text);
      await forgetDraft(db, reportId);
      await queryClient.invalidateQueries({ queryKey: ["report", reportId] });
      await queryClient.invalidateQueries({ queryKey: ["reports"] });
    } catch (e) {
      setError(describeError(e));
      setSigning(false);
    }
  }

  return (
    <Card>
      <h2 className="text-lg font-semibold">Your report</h2>
      <div className="mt-2 flex flex-col gap-3">
        <TextArea label="Findings" value={text.findings} onChange={(e) => change({ ...text, findings: e.target.value })} maxLength={20000} />
        <TextArea label="Impression" value={text.impression} onChange={(e) => change({ ...text, impression: e.target.value })} maxLength={20000} />
        <p role="status" data-testid="draft-state" data-state={draftState} className="text-sm text-slate-700">
          {DRAFT_STATE[draftState]}
        </p>
        {error && <Alert>{error}</Alert>}
        <div>
          <Button onClick={() => void sign()} disabled={signing || !text.findings.trim() || !text.impression.trim()}>
            Sign the report
          </Button>
        </div>
      </div>
    </Card>
  );
}

function Signed({ report }: { report: Report }) {
  const queryClient = useQueryClient();
  const latest = report.latest;
  const [amending, setAmending] = useState(false);
  const [text, setText] = useState<ReportText>({ findings: latest?.findings ?? "", impression: latest?.impression ?? "" });
  const [reason, setReason] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function amend() {
    setBusy(true);
    setError(null);
    try {
      await amendReport(report.id, text, reason.trim());
      await queryClient.invalidateQueries({ queryKey: ["report", report.id] });
      await queryClient.invalidateQueries({ queryKey: ["reports"] });
      setAmending(false);
      setReason("");
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <>
      <Card>
        <h2 className="text-lg font-semibold">
          Signed report <span data-testid="report-state">({REPORT_STATUS[report.status]})</span>
        </h2>
        {latest && (
          <article aria-label="Signed report" className="mt-2">
            <h3 className="font-semibold">Findings</h3>
            <p className="whitespace-pre-wrap">{latest.findings}</p>
            <h3 className="mt-2 font-semibold">Impression</h3>
            <p className="whitespace-pre-wrap">{latest.impression}</p>
            <p className="mt-2 text-sm text-slate-700">
              Version {latest.version}, {latest.source === "pacs" ? "from the PACS" : "signed"}{" "}
              {new Date(latest.signed_at).toLocaleString()}
              {latest.pacs_receipt_id ? " · stored in the PACS" : ""}
            </p>
          </article>
        )}
        <div className="mt-3 flex flex-wrap gap-2">
          <SecondaryButton onClick={() => downloadReportPdf(report.id).then(() => setError(null), (e: unknown) => setError(describeError(e)))}>
            Download PDF
          </SecondaryButton>
          <SecondaryButton onClick={() => setAmending(!amending)} aria-expanded={amending}>
            {amending ? "Cancel the amendment" : "Amend"}
          </SecondaryButton>
        </div>
        {error && <Alert>{error}</Alert>}
        {amending && (
          <form
            aria-label="Amendment"
            className="mt-3 flex flex-col gap-3"
            onSubmit={(e) => {
              e.preventDefault();
              void amend();
            }}
          >
            <TextArea label="Findings" value={text.findings} onChange={(e) => setText({ ...text, findings: e.target.value })} maxLength={20000} />
            <TextArea label="Impression" value={text.impression} onChange={(e) => setText({ ...text, impression: e.target.value })} maxLength={20000} />
            <Field label="Reason for the amendment" value={reason} onChange={(e) => setReason(e.target.value)} required />
            <div>
              <Button type="submit" disabled={busy || !reason.trim() || !text.findings.trim() || !text.impression.trim()}>
                Sign the amendment
              </Button>
            </div>
          </form>
        )}
      </Card>
      <Card>
        <h2 className="text-lg font-semibold">History</h2>
        <ol aria-label="Versions" className="mt-2 flex flex-col gap-2">
          {[...(report.versions ?? [])].reverse().map((v) => (
            <li key={v.version} className="border-l-2 border-slate-300 pl-3">
              <p className="font-medium">
                Version {v.version} · {new Date(v.signed_at).toLocaleString()}
                {v.reason ? ` · amended: ${v.reason}` : " · first signature"}
              </p>
              <details>
                <summary className="cursor-pointer text-sm">Text of version {v.version}</summary>
                <p className="whitespace-pre-wrap text-sm">{v.findings}</p>
                <p className="whitespace-pre-wrap text-sm">{v.impression}</p>
              </details>
            </li>
          ))}
        </ol>
      </Card>
    </>
  );
}

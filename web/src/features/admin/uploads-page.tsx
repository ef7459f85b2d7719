// The administrator's uploads needing attention: refused by the PACS, retrying or not moving,
// each with the PACS's last answer; retry (after the PACS is back) or cancel.
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Alert, Card, SecondaryButton } from "../../components/ui";
import type { UploadSummary } from "../../lib/api/client";
import { describeError } from "../../lib/api/errors";
import { useLiveConnected } from "../../lib/live-status";
import { formatDicomDate } from "../../lib/format";
import { cancelUpload, problemUploadsOptions, retryUpload, uploadDetailOptions } from "./api";

const STATUS: Record<string, string> = {
  received: "Received, not yet queued",
  queued: "Waiting for the PACS",
  forwarding: "Sending to the PACS",
  failed: "PACS delivery failed",
};

export function AdminUploadsPage() {
  const live = useLiveConnected();
  const failed = useQuery(problemUploadsOptions(live, "failed"));
  const stuck = useQuery(problemUploadsOptions(live, "stuck"));
  // Failed first, then those retrying or not moving (an upload is in one list only).
  const seen = new Set<string>();
  const uploads = [...(failed.data?.items ?? []), ...(stuck.data?.items ?? [])].filter((u) => !seen.has(u.id) && seen.add(u.id));
  const error = failed.error ?? stuck.error;
  return (
    <div className="flex flex-col gap-4">
      <h1 className="text-2xl font-semibold">Uploads needing attention</h1>
      {error && <Alert>{describeError(error)}</Alert>}
      {failed.data && stuck.data && uploads.length === 0 && <p>Nothing needs attention.</p>}
      <ul aria-label="Uploads needing attention" className="flex flex-col gap-2">
        {uploads.map((upload) => (
          <li key={upload.id} data-testid="attention-item">
            <ProblemRow upload={upload} />
          </li>
        ))}
      </ul>
    </div>
  );
}

function ProblemRow({ upload }: { upload: UploadSummary }) {
  const queryClient = useQueryClient();
  const detail = useQuery(uploadDetailOptions(upload.id, upload.status));
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const forwarding = detail.data?.forwarding;
  const reason = forwarding?.last_error;
  // Queued again after a failed attempt: its status says "forwarding" or "queued", but it waits.
  const retrying = upload.status !== "failed" && (forwarding?.attempts ?? 0) > 0 && forwarding?.status === "queued";

  async function act(action: (id: string) => Promise<unknown>) {
    setBusy(true);
    setError(null);
    try {
      await action(upload.id);
      await queryClient.invalidateQueries({ queryKey: ["uploads"] });
      await queryClient.invalidateQueries({ queryKey: ["upload", upload.id] });
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Card>
      <p className="font-medium" data-testid="attention-status" data-status={upload.status}>
        {retrying
          ? `Waiting to retry (${forwarding?.attempts ?? 0} failed attempt${forwarding?.attempts === 1 ? "" : "s"})${forwarding?.next_attempt_at ? `; next try ${new Date(forwarding.next_attempt_at).toLocaleString()}` : ""}`
          : (STATUS[upload.status] ?? upload.status)}
      </p>
      <p className="text-sm text-slate-700">
        {[upload.metadata.modality, formatDicomDate(upload.metadata.study_date)].filter(Boolean).join(" · ")} · {upload.file_count} files · sent{" "}
        {new Date(upload.created_at).toLocaleString()}
      </p>
      {reason && <p className="text-sm">Last PACS answer: {reason}</p>}
      <div className="mt-2 flex flex-wrap gap-2">
        <SecondaryButton onClick={() => void act(retryUpload)} disabled={busy}>
          Retry
        </SecondaryButton>
        <SecondaryButton
          onClick={() => {
            if (window.confirm("Cancel this upload? It will never reach the PACS and its stored files are deleted.")) void act(cancelUpload);
          }}
          disabled={busy}
        >
          Cancel upload
        </SecondaryButton>
      </div>
      {error && <Alert>{error}</Alert>}
    </Card>
  );
}

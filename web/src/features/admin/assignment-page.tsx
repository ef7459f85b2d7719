// The administrator's assignment: the automatic rule (on or off; round robin among the readers
// of the study's modality or among every active radiologist), the studies waiting for a
// radiologist, each assigned by hand, and the modalities each radiologist reads.
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useId, useState, type FormEvent } from "react";
import { Alert, Button, Card, SecondaryButton } from "../../components/ui";
import type { Schemas } from "../../lib/api/client";
import { describeError } from "../../lib/api/errors";
import { useLiveConnected } from "../../lib/live-status";
import { formatDicomDate, formatPersonName } from "../../lib/format";
import { assignmentRuleOptions, assignReport, parseModalities, radiologistsOptions, setAssignmentRule, setModalities, unassignedOptions } from "./api";

type Radiologist = Schemas["RadiologistRead"];
type ReportSummary = Schemas["ReportSummary"];

export function AssignmentPage() {
  const live = useLiveConnected();
  const unassigned = useQuery(unassignedOptions(live));
  const radiologists = useQuery(radiologistsOptions());
  const active = (radiologists.data?.items ?? []).filter((r) => r.is_active);
  return (
    <div className="flex flex-col gap-4">
      <h1 className="text-2xl font-semibold">Assignment</h1>
      <RuleCard />
      <section aria-labelledby="unassigned-heading" className="flex flex-col gap-2">
        <h2 id="unassigned-heading" className="text-lg font-semibold">
          Studies waiting for a radiologist
        </h2>
        {unassigned.error && <Alert>{describeError(unassigned.error)}</Alert>}
        {unassigned.data?.items.length === 0 && <p>Every study has its radiologist.</p>}
        <ul aria-label="Unassigned studies" className="flex flex-col gap-2">
          {unassigned.data?.items.map((report) => (
            <li key={report.id}>
              <AssignRow report={report} radiologists={active} />
            </li>
          ))}
        </ul>
      </section>
      <section aria-labelledby="radiologists-heading" className="flex flex-col gap-2">
        <h2 id="radiologists-heading" className="text-lg font-semibold">
          Radiologists
        </h2>
        {radiologists.error && <Alert>{describeError(radiologists.error)}</Alert>}
        <ul aria-label="Radiologists" className="flex flex-col gap-2">
          {radiologists.data?.items.map((r) => (
            <li key={r.id}>
              <RadiologistRow radiologist={r} />
            </li>
          ))}
        </ul>
      </section>
    </div>
  );
}

function AssignRow({ report, radiologists }: { report: ReportSummary; radiologists: Radiologist[] }) {
  const queryClient = useQueryClient();
  const selectId = useId();
  // Those who read the study's modality first, then the others.
  const sorted = [...radiologists].sort(
    (a, b) => Number(b.modalities.includes(report.modality ?? "")) - Number(a.modalities.includes(report.modality ?? "")),
  );
  const [choice, setChoice] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const chosen = choice || sorted[0]?.id || "";

  async function assign() {
    setBusy(true);
    setError(null);
    try {
      await assignReport(report.id, chosen);
      await queryClient.invalidateQueries({ queryKey: ["reports"] });
      await queryClient.invalidateQueries({ queryKey: ["radiologists"] });
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Card>
      <p className="font-medium">
        {formatPersonName(report.metadata.patient_name)} · {[report.modality, formatDicomDate(report.study_date), report.metadata.study_description].filter(Boolean).join(" · ")}
      </p>
      <p className="text-sm text-slate-700">Waiting since {new Date(report.created_at).toLocaleString()}</p>
      <div className="mt-2 flex flex-wrap items-end gap-2">
        <div className="flex flex-col gap-1">
          <label htmlFor={selectId} className="text-sm font-medium">
            Radiologist
          </label>
          <select id={selectId} className="rounded-md border border-slate-400 bg-white px-3 py-2" value={chosen} onChange={(e) => setChoice(e.target.value)}>
            {sorted.map((r) => (
              <option key={r.id} value={r.id}>
                {r.username} ({r.modalities.join(", ") || "any modality"}; {r.open_reports} open)
              </option>
            ))}
          </select>
        </div>
        <Button onClick={() => void assign()} disabled={busy || !chosen}>
          Assign
        </Button>
      </div>
      {sorted.length === 0 && <p>No active radiologist.</p>}
      {error && <Alert>{error}</Alert>}
    </Card>
  );
}

function RadiologistRow({ radiologist }: { radiologist: Radiologist }) {
  const queryClient = useQueryClient();
  const inputId = useId();
  const [text, setText] = useState(radiologist.modalities.join(", "));
  const [error, setError] = useState<string | null>(null);
  const [saved, setSaved] = useState(false);

  async function save() {
    setSaved(false);
    const { modalities, invalid } = parseModalities(text);
    if (invalid.length > 0) {
      setError(`Not a modality code: ${invalid.join(", ")} (letters, digits and _ only).`);
      return;
    }
    try {
      await setModalities(radiologist.id, modalities);
      setError(null);
      setSaved(true);
      setText(modalities.join(", "));
      await queryClient.invalidateQueries({ queryKey: ["radiologists"] });
    } catch (e) {
      setError(describeError(e));
    }
  }

  return (
    <Card>
      <p className="font-medium">
        {radiologist.username}
        {radiologist.is_active ? "" : " (disabled)"} · {radiologist.open_reports} open
      </p>
      <form
        className="mt-2 flex flex-wrap items-end gap-2"
        onSubmit={(e) => {
          e.preventDefault();
          void save();
        }}
      >
        <div className="flex flex-col gap-1">
          <label htmlFor={inputId} className="text-sm font-medium">
            Modalities of {radiologist.username}
          </label>
          <input id={inputId} className="rounded-md border border-slate-400 bg-white px-3 py-2" value={text} onChange={(e) => setText(e.target.value)} placeholder="CT, MR" />
        </div>
        <SecondaryButton type="submit">Save</SecondaryButton>
        {saved && <span role="status">Saved</span>}
      </form>
      {error && <Alert>{error}</Alert>}
    </Card>
  );
}

type Rule = Schemas["AssignmentRuleRead"];

function RuleCard() {
  const rule = useQuery(assignmentRuleOptions());
  return (
    <Card>
      <h2 className="text-lg font-semibold">Automatic assignment</h2>
      {rule.error && <Alert>{describeError(rule.error)}</Alert>}
      {rule.data && <RuleForm rule={rule.data} />}
    </Card>
  );
}

function RuleForm({ rule }: { rule: Rule }) {
  const queryClient = useQueryClient();
  const [enabled, setEnabled] = useState(rule.enabled);
  const [byModality, setByModality] = useState(rule.by_modality);
  const [error, setError] = useState<string | null>(null);
  const [saved, setSaved] = useState(false);
  const [busy, setBusy] = useState(false);
  const name = useId();

  async function save(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    setSaved(false);
    try {
      const next = await setAssignmentRule({ enabled, by_modality: byModality });
      queryClient.setQueryData(assignmentRuleOptions().queryKey, next);
      setSaved(true);
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <form aria-label="Automatic assignment" className="mt-2 flex flex-col gap-3" onSubmit={(e) => void save(e)}>
      <p data-testid="rule-summary" data-enabled={rule.enabled}>
        {rule.enabled
          ? `On: each new study goes in turn to ${rule.by_modality ? "the active radiologists who read its modality (all of them when none does)" : "every active radiologist"}`
          : "Off: new studies wait here for assignment by hand"}
        {" "}({rule.active_radiologists} active radiologist{rule.active_radiologists === 1 ? "" : "s"}).{" "}
        {rule.source === "configuration"
          ? "Set by the gateway's configuration until an administrator saves a rule here."
          : `Set by ${rule.updated_by ?? "an administrator"}${rule.updated_at ? ` on ${new Date(rule.updated_at).toLocaleString()}` : ""}.`}
      </p>
      <label className="flex items-center gap-2">
        <input type="checkbox" className="h-5 w-5" checked={enabled} onChange={(e) => setEnabled(e.target.checked)} />
        Assign new studies automatically
      </label>
      <fieldset className="flex flex-col gap-1" disabled={!enabled}>
        <legend className="text-sm font-medium">Round robin among</legend>
        <label className="flex items-center gap-2">
          <input type="radio" name={name} className="h-5 w-5" checked={byModality} onChange={() => setByModality(true)} />
          the radiologists who read the study&apos;s modality
        </label>
        <label className="flex items-center gap-2">
          <input type="radio" name={name} className="h-5 w-5" checked={!byModality} onChange={() => setByModality(false)} />
          every active radiologist
        </label>
      </fieldset>
      <div className="flex items-center gap-2">
        <Button type="submit" disabled={busy}>
          Save the rule
        </Button>
        {saved && <span role="status">Rule saved</span>}
      </div>
      {error && <Alert>{error}</Alert>}
    </form>
  );
}

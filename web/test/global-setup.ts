// Real DICOM for the unit tests, written once per run by the gateway's own synthetic study
// generator (relaypacs.devtools.synth, fake patients only): a CD export with its DICOMDIR in
// two series, a flat study in UTF-8, a raw data set without preamble, and a file that is not
// DICOM.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { TestProject } from "vitest/node";

const SCRIPT = `
import sys
from pathlib import Path
from relaypacs.devtools.synth import write_study
from relaypacs.devtools.unusual import make_no_preamble
out = Path(sys.argv[1])
write_study(out / "cd", instances=4, series=2, rows=16, columns=16, with_dicomdir=True,
            study_description="CT CHEST", accession_number="ACC42")
write_study(out / "flat", instances=2, rows=16, columns=16, modality="MR",
            patient_name="DOE^JANE", patient_id="X9", birth_date="19450203")
for n in range(13):  # the upload engine's studies: 2 series, 4 instances of 3 chunks of 64 KiB
    write_study(out / f"multi{n}", instances=4, series=2, rows=256, columns=256,
                patient_name="ROE^RICHARD", patient_id="TEST0001", birth_date="19310412")
for n in range(9):  # chunk batches: 2 series, 24 whole files of about 9 kB, 7 to a batch of 64 KiB
    write_study(out / f"small{n}", instances=24, series=2, rows=64, columns=64,
                patient_name="ROE^RICHARD", patient_id="TEST0001", birth_date="19310412")
(out / "raw.dcm").write_bytes(make_no_preamble())
(out / "notes.txt").write_text("not DICOM at all")
import zipfile
with zipfile.ZipFile(out / "cd.zip", "w", zipfile.ZIP_DEFLATED) as archive:  # a zipped CD
    for path in sorted((out / "cd").rglob("*")):
        archive.write(path, path.relative_to(out))
`;

declare module "vitest" {
  export interface ProvidedContext {
    dicomDir: string;
  }
}

export default function setup(project: TestProject) {
  const dir = mkdtempSync(join(tmpdir(), "relaypacs-web-"));
  const python = process.env.RELAYPACS_PYTHON ?? resolve(import.meta.dirname, "../../.venv/bin/python");
  execFileSync(python, ["-c", SCRIPT, dir], { cwd: resolve(import.meta.dirname, "../.."), stdio: "inherit" });
  project.provide("dicomDir", dir);
  return () => rmSync(dir, { recursive: true, force: true });
}

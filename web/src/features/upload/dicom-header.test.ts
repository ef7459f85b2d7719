import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { describe, expect, inject, it } from "vitest";
import { HEADER_BYTES, readFileHeader, readHeader } from "./dicom-header";
import { groupByStudy, type PickedFile } from "./group";

const dir = inject("dicomDir");

function walk(root: string): string[] {
  return readdirSync(root).flatMap((name) => {
    const path = join(root, name);
    return statSync(path).isDirectory() ? walk(path) : [path];
  });
}

function asFile(path: string, root: string): PickedFile {
  const bytes = readFileSync(path);
  return { file: new File([bytes], path.split("/").pop()!), name: relative(root, path) };
}

describe("readHeader on the gateway's synthetic studies", () => {
  it("reads patient, study and series of every instance of a CD export", async () => {
    const root = join(dir, "cd");
    const instances = walk(root).filter((p) => !p.endsWith("DICOMDIR"));
    expect(instances).toHaveLength(4);
    for (const path of instances) {
      const result = await readFileHeader(asFile(path, root).file);
      expect(result.ok).toBe(true);
      if (!result.ok) continue;
      expect(result.header.kind).toBe("instance");
      expect(result.header.patientName).toBe("QUAXWORTHY^PERPETUA");
      expect(result.header.birthDate).toBe("19310412");
      expect(result.header.studyDescription).toBe("CT CHEST");
      expect(result.header.accessionNumber).toBe("ACC42");
      expect(result.header.modality).toBe("CT");
      expect(result.header.studyUid).toMatch(/^[0-9.]+$/);
      expect(result.header.sopUid).toMatch(/^[0-9.]+$/);
    }
  });

  it("recognises the DICOMDIR as the CD's index, not an instance", () => {
    const result = readHeader(new Uint8Array(readFileSync(join(dir, "cd", "DICOMDIR"))), true);
    expect(result).toMatchObject({ ok: true, header: { kind: "dicomdir", studyUid: null } });
  });

  it("reads a raw data set without preamble (implicit VR little endian)", () => {
    const result = readHeader(new Uint8Array(readFileSync(join(dir, "raw.dcm"))), true);
    expect(result.ok).toBe(true);
    if (result.ok) expect(result.header.studyUid).toMatch(/^[0-9.]+$/);
  });

  it("says a text file is not DICOM", () => {
    expect(readHeader(new Uint8Array(readFileSync(join(dir, "notes.txt"))), true)).toEqual({ ok: false, reason: "not_dicom" });
  });

  it("says a DICOM file cut inside its header is truncated", () => {
    const bytes = new Uint8Array(readFileSync(walk(join(dir, "flat"))[0]!));
    expect(readHeader(bytes.subarray(0, 200), true)).toEqual({ ok: false, reason: "truncated" });
  });

  it("reads the header from the first bytes of a large file", async () => {
    const bytes = readFileSync(walk(join(dir, "flat"))[0]!);
    const padded = new Uint8Array(HEADER_BYTES * 3);
    padded.set(bytes);
    const result = await readFileHeader(new File([padded], "big.dcm"));
    expect(result).toMatchObject({ ok: true, header: { patientName: "DOE^JANE", modality: "MR" } });
  });
});

describe("groupByStudy", () => {
  it("groups a folder into studies and series, attaches the DICOMDIR, lists what is not DICOM", async () => {
    const picked = [...walk(join(dir, "cd")), ...walk(join(dir, "flat")), join(dir, "notes.txt")].map((p) => asFile(p, dir));
    const results = await Promise.all(picked.map(async (p) => ({ picked: p, result: await readFileHeader(p.file) })));
    const grouping = groupByStudy(results);
    expect(grouping.studies).toHaveLength(2);
    const cd = grouping.studies.find((s) => s.description === "CT CHEST")!;
    expect(cd.series.map((s) => s.instances)).toEqual([2, 2]);
    expect(cd.files).toHaveLength(4);
    const flat = grouping.studies.find((s) => s.patientName === "DOE^JANE")!;
    expect(flat.modalities).toEqual(["MR"]);
    expect(flat.birthDate).toBe("19450203");
    // Two studies: the DICOMDIR goes with neither, and is listed with the text file.
    expect(grouping.skipped.map((s) => s.reason).sort()).toEqual(["DICOMDIR (a CD's index, not an image)", "not a DICOM file"]);
  });

  it("keeps a one-study CD's DICOMDIR with the study", async () => {
    const picked = walk(join(dir, "cd")).map((p) => asFile(p, dir));
    const results = await Promise.all(picked.map(async (p) => ({ picked: p, result: await readFileHeader(p.file) })));
    const grouping = groupByStudy(results);
    expect(grouping.studies).toHaveLength(1);
    expect(grouping.studies[0]!.files.map((f) => f.name)).toContain("cd/DICOMDIR");
    expect(grouping.skipped).toEqual([]);
  });
});

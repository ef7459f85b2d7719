import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, inject, it } from "vitest";
import { groupByStudy } from "./group";
import { unzip } from "./zip";

const dir = inject("dicomDir");

describe("unzip", () => {
  it("opens a zipped CD export: every member read, the study grouped with its DICOMDIR", async () => {
    const archive = new File([readFileSync(join(dir, "cd.zip"))], "cd.zip");
    const members = await unzip(archive);
    expect(members).not.toBeNull();
    expect(members!.map((m) => m.name)).toContain("cd/DICOMDIR");
    expect(members!.filter((m) => m.result.ok)).toHaveLength(5);
    // The bytes are the member's own.
    const dicomdir = members!.find((m) => m.name === "cd/DICOMDIR")!;
    expect(new Uint8Array(await dicomdir.blob.arrayBuffer())).toEqual(new Uint8Array(readFileSync(join(dir, "cd", "DICOMDIR"))));
    const grouping = groupByStudy(members!.map((m) => ({ picked: { file: new File([m.blob], m.name), name: m.name }, result: m.result })));
    expect(grouping.studies).toHaveLength(1);
    expect(grouping.studies[0]!.files).toHaveLength(5);
    expect(grouping.studies[0]!.series.map((s) => s.instances)).toEqual([2, 2]);
  });

  it("says null for a file that is not a ZIP archive", async () => {
    expect(await unzip(new File([readFileSync(join(dir, "notes.txt"))], "notes.zip"))).toBeNull();
  });
});

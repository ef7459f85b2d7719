import { describe, expect, it } from "vitest";
import { formatDicomDate, formatPersonName } from "./format";

describe("DICOM values on the pages", () => {
  it("shows a DICOM date as a day, and anything else as it is", () => {
    expect(formatDicomDate("19310412")).toBe("1931-04-12");
    expect(formatDicomDate("1931")).toBe("1931");
    expect(formatDicomDate(null)).toBe("");
  });

  it("shows a DICOM person name as family, given names (the alphabetic group)", () => {
    expect(formatPersonName("QUAXWORTHY^PERPETUA")).toBe("QUAXWORTHY, PERPETUA");
    expect(formatPersonName("Doe^John^Q^Dr")).toBe("Doe, John Q");
    expect(formatPersonName("Yamada^Tarou=山田^太郎")).toBe("Yamada, Tarou");
    expect(formatPersonName("ONLYFAMILY")).toBe("ONLYFAMILY");
    expect(formatPersonName("")).toBe("(no name)");
    expect(formatPersonName("^")).toBe("(no name)");
  });

});

import { describe, expect, it } from "vitest";
import { formatDicomDate, formatPersonName, isSigned } from "./format";

describe("the radiologist's formats", () => {
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

  it("takes ready and amended for signed", () => {
    expect(isSigned("ready")).toBe(true);
    expect(isSigned("amended")).toBe(true);
    expect(isSigned("assigned")).toBe(false);
    expect(isSigned("pending")).toBe(false);
  });
});

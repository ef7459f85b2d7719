// How the pages show DICOM values (dates, person names).

/** A DICOM date (YYYYMMDD) as YYYY-MM-DD; anything else as it is. */
export function formatDicomDate(value: string | null | undefined): string {
  if (!value) return "";
  const d = /^(\d{4})(\d{2})(\d{2})$/.exec(value);
  return d ? `${d[1]}-${d[2]}-${d[3]}` : value;
}

/** A DICOM person name (Family^Given^Middle^Prefix^Suffix) as "Family, Given Middle". */
export function formatPersonName(value: string | null | undefined): string {
  if (!value) return "(no name)";
  const [family = "", given = "", middle = ""] = value.split("=")[0]!.split("^");
  const rest = [given, middle].filter(Boolean).join(" ");
  return [family, rest].filter(Boolean).join(", ") || "(no name)";
}

import { describe, expect, test } from "bun:test";
import { formatBytes, formatDuration, ProgressBar } from "../../../src/cli/progress.ts";

describe("progress bar (tftpd get/put)", () => {
  test("formatBytes / formatDuration", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(1023)).toBe("1023 B");
    expect(formatBytes(1024)).toBe("1.00 KiB");
    expect(formatBytes(1536 * 1024)).toBe("1.50 MiB");
    expect(formatBytes(500 * 1024 * 1024)).toBe("500 MiB");
    expect(formatDuration(0)).toBe("0:00");
    expect(formatDuration(75)).toBe("1:15");
    expect(formatDuration(3725)).toBe("1:02:05");
    expect(formatDuration(Number.NaN)).toBe("--:--");
  });

  test("redraws at most 10 times a second, then a final line", () => {
    const writes: string[] = [];
    const bar = new ProgressBar("initrd.img", { write: (t: string) => writes.push(t), columns: 100 });
    for (let i = 1; i <= 1000; i++) bar.update(i * 1000, 1_000_000);
    expect(writes.length).toBeLessThanOrEqual(1);
    bar.done();
    const last = writes.at(-2)!;
    expect(last).toContain("initrd.img");
    expect(last).toContain("100%");
    expect(last).toContain("977 KiB / 977 KiB");
    expect(last).toContain("ETA");
    expect(writes.at(-1)).toBe("\n");
  });

  test("without a total: bytes and rate only", () => {
    const bar = new ProgressBar("x", { write: () => {}, columns: 80 });
    bar.update(2048, null);
    const line = bar.line();
    expect(line).toContain("2.00 KiB");
    expect(line).not.toContain("%");
  });
});

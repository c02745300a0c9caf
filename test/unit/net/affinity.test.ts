import { describe, expect, test } from "bun:test";
import { formatCpuList, usableCpus, parseCpuList, planAffinity, threadId } from "../../../src/net/affinity.ts";

describe("CPU lists", () => {
  test("parse and format are each other's inverse, ranges folded", () => {
    expect(parseCpuList("0-3,8\n")).toEqual([0, 1, 2, 3, 8]);
    expect(parseCpuList("5")).toEqual([5]);
    expect(formatCpuList([8, 0, 1, 2, 3])).toBe("0-3,8");
    expect(formatCpuList([1, 3, 5])).toBe("1,3,5");
    expect(parseCpuList(" 1 - 2 , 5")).toEqual([1, 2, 5]);
    expect(parseCpuList("x-1")).toBeNull();
    expect(parseCpuList("3-1")).toBeNull();
    expect(parseCpuList("")).toBeNull();
  });

  test("the CPUs this process may use are read from /proc/self/status; a file that is not there gives null", () => {
    const usable = usableCpus();
    expect(usable).not.toBeNull();
    expect(usable!.length).toBeGreaterThanOrEqual(1);
    expect(usableCpus("/nonexistent/status")).toBeNull();
    expect(threadId()).toBe(process.pid); // the main thread's id is the process id
  });
});

describe("which CPU each worker gets", () => {
  test('"none" and a machine whose CPUs cannot be read pin nothing; the latter says so', () => {
    expect(planAffinity("none", 2, [0, 1, 2, 3])).toEqual({ perWorker: [null, null], unhonoured: null });
    const unread = planAffinity([0], 1, null);
    expect(unread.perWorker).toEqual([null]);
    expect(unread.unhonoured).toContain("performance.cpu.affinity");
  });

  test('"auto": one CPU each from the last down when two are left over; else the kernel decides', () => {
    expect(planAffinity("auto", 2, [0, 1, 2, 3]).perWorker).toEqual([[3], [2]]);
    expect(planAffinity("auto", 6, [0, 1, 2, 3, 4, 5, 6, 7]).perWorker).toEqual([[7], [6], [5], [4], [3], [2]]);
    // the defaults: one worker per CPU but one
    expect(planAffinity("auto", 3, [0, 1, 2, 3])).toEqual({ perWorker: [null, null, null], unhonoured: null });
    expect(planAffinity("auto", 1, [0, 1])).toEqual({ perWorker: [null], unhonoured: null });
  });

  test("a list: round robin over its CPUs; CPUs this process may not use are left out and named", () => {
    expect(planAffinity([2, 3], 3, [0, 1, 2, 3])).toEqual({ perWorker: [[2], [3], [2]], unhonoured: null });
    const partly = planAffinity([1, 7, 8], 2, [0, 1]);
    expect(partly.perWorker).toEqual([[1], [1]]);
    expect(partly.unhonoured).toBe("performance.cpu.affinity: CPU 7-8 is not available here (this process may use 0-1); workers are pinned to 1 only");
    const none = planAffinity([9], 1, [0, 1]);
    expect(none.perWorker).toEqual([null]);
    expect(none.unhonoured).toBe("performance.cpu.affinity: no CPU of 9 is available here (this process may use 0-1), so transfer workers are not pinned");
  });
});

import pkg from "../package.json" with { type: "json" };

/** Stamped by `bun build --define` in build/compile.ts; "dev" when run from source. */
declare const TFTPD_BUILD_COMMIT: string | undefined;

export const VERSION: string = pkg.version;
export const BUILD_COMMIT: string = typeof TFTPD_BUILD_COMMIT === "string" ? TFTPD_BUILD_COMMIT : "dev";

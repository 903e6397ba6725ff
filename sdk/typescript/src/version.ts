/** The SDK's version, sent in `hello.sdk_version` (keep in step with package.json). */
export const SDK_VERSION = "0.1.0";

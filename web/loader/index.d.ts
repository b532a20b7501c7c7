// Types of web/loader/index.js (the registry's index.json schema: pipeline/schemas/registry-index.schema.json).

export type TypedArray = Float32Array | Float64Array | Int8Array | Uint8Array | Int16Array | Uint16Array |
  Int32Array | Uint32Array | BigInt64Array | BigUint64Array;

/** The adapters' tensor: row-major data, dims, dtype ('float32', 'int64', ...). */
export interface Tensor {
  data: TypedArray;
  dims: number[];
  dtype: string;
}

export interface Capabilities {
  /** In the registry's vocabulary: wasm, wasm-simd, wasm-relaxed-simd, wasm-jspi, wasm-threads, webgpu, shader-f16, webgl2. */
  features: string[];
  webgpu: null | {vendor?: string; architecture?: string; description?: string; isFallbackAdapter?: boolean;
                  features?: string[]; error?: string};
  webgl: null | {renderer: string};
  crossOriginIsolated: boolean;
}

export interface Attempt {
  target: string;
  runtime?: string;
  variant?: string;
  /** Position among the target's ranked candidates (0: the winner). */
  rank?: number;
}

export interface LoadInfo {
  name: string;
  version: string;
  alias: string | null;
  registry: string;
  target: string;
  runtime: string;
  runtime_version: string | null;
  variant: string;
  backend: string;
  threads: number;
  rank: number;
  /** Why this candidate: the registry's selection reason, or which fallback it was. */
  reason: string;
  ship_in: {mode: 'main' | 'worker' | null; reason: string};
  /** What it measured in the pipeline (latency, cold start, accuracy, memory, ...). */
  measured: Record<string, unknown>;
  capabilities: Capabilities;
  skipped: (Attempt & {why: string})[];
  failed: (Attempt & {stage: 'download' | 'session' | 'warm-up'; error: string})[];
  files: {path: string; from: 'cache' | 'network'; bytes: number}[];
  timings: {index_ms: number; probe_ms: number; download_ms: number; session_ms: number; warmup_ms: number;
            total_ms: number};
}

export interface LoadOptions {
  /** Base URL of the registry (where index.json is). */
  registry: string;
  name: string;
  alias?: string;
  version?: string;
  /** Order of targets to try; default ['webgpu', 'wasm', 'webgl']. */
  targets?: string[];
  /** Accept a software (fallback) WebGPU adapter; default false. */
  allowSoftwareGpu?: boolean;
  /** The visitor's device class (a browser host's device_class): that class's decision per target when the
   *  registry has one, else the target's default. */
  deviceClass?: string;
  /** Cache files in the Cache API by sha256; default true. */
  cache?: boolean;
  fetch?: typeof fetch;
}

export declare class Model {
  info: LoadInfo;
  inputs: {name: string; shape: (number | string)[]; dtype: string; layout?: string; preprocessing?: Record<string, unknown>}[];
  outputs: {name: string; kind: string}[];
  run(feeds: Record<string, Tensor>): Promise<Record<string, Tensor>>;
  labels(output?: string): Promise<string[] | null>;
  /** A file published beside the model (the recipe's `assets`, e.g. `tokenizer`), sha256-checked. */
  asset(name: string): Promise<ArrayBuffer>;
  preprocess(image: CanvasImageSource & {width: number; height: number}, input?: string): Record<string, Tensor>;
  release(): Promise<void>;
}

export declare class IntegrityError extends Error {
  path: string;
}

export declare class NoCandidateError extends Error {
  info: Partial<LoadInfo>;
}

export declare const DEFAULT_TARGETS: string[];
export declare function loadModel(opts: LoadOptions): Promise<Model>;
export declare function probeCapabilities(): Promise<Capabilities>;
export declare function imageToTensor(image: CanvasImageSource & {width: number; height: number},
                                      spec: {shape: (number | string)[]; layout?: string;
                                             preprocessing?: Record<string, unknown>}): Tensor;

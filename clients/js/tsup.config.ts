import { defineConfig } from 'tsup';

export default defineConfig([
  {
    // For bundlers and Node: readable output, the application's bundler minifies.
    entry: { index: 'src/index.ts' },
    format: ['esm', 'cjs'],
    dts: true,
    sourcemap: true,
    target: 'es2020',
  },
  {
    // For <script src>: one file, global `PubSub`, minified (its gzip size is budgeted).
    entry: { pubsub: 'src/index.ts' },
    format: ['iife'],
    globalName: 'PubSub',
    minify: true,
    sourcemap: true,
    target: 'es2018',
  },
]);

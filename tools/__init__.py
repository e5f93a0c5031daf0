"""Tools that are not the library: run from a checkout (`python -m tools.NAME`), never imported by lcl_jax,
data_pipelines or configs.

  bench            the compiled train step's time and MFU (synthetic batch, and fed by the pipeline)
  plan             per-device memory, FLOPs and collectives of the real step, compiled ahead of time for a mesh
  hlo_collectives  what plan reads from the compiled HLO: collectives and their bytes
  ablation         the paper's ablation study at demo size (docs/ablation.md)
  data_bench       the data pipeline's throughput
  inspect_batches  what the pipeline's batches hold, as text and a picture
  tfdata_compare   our batch stream against tf.data: resume on other host counts, transform speed, checkpoints
                   (docs/pipeline.md)
The scripts beside them (lcl_parity_fixture.py, clip_tokenizer_fixture.py, torch_fixtures.py) run with torch and
the authors' code to write tests/fixtures.
"""

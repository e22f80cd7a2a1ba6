-- Videos similar to a given one, with BigQuery VECTOR_SEARCH over the scored table: the at-scale
-- alternative to the local faiss index of `pipelines.index` / `pipelines.search`.
--
-- Usage (GoogleSQL; replace `my-project.videos.scores` with your table, see deploy/README.md §4):
--
--   bq query --use_legacy_sql=false --parameter=video_id::VIDEO_ID < deploy/vector_search.sql
--
-- Output: ten rows, one per neighbour (the query video itself left out), most similar first, with
-- `similarity` = 1 − cosine distance, the neighbour's ground-truth labels and the labels shared with
-- the query (join `labels` with your `label_id,label_name` table for names).
--
-- 1. Vector index (once per table; optional). Without one, VECTOR_SEARCH compares the query with
--    every row (exact, like `--index_type flat`). With an IVF index it visits a fraction of the lists,
--    like `--index_type ivf --nprobe`. BigQuery fills the index asynchronously and only for tables
--    above its minimum size; until then searches stay exact. Embeddings must all have one length.
--
--      CREATE VECTOR INDEX IF NOT EXISTS scores_embedding_ivf
--      ON `my-project.videos.scores`(embedding)
--      STORING (labels, model_version)
--      OPTIONS (index_type = 'IVF', distance_type = 'COSINE', ivf_options = '{"num_lists": 1000}');
--
--    and add `options => '{"fraction_lists_to_search": 0.05}'` to VECTOR_SEARCH below to trade
--    recall for speed (BENCHMARKS.md measures the same trade-off for faiss).
--
-- 2. Whitened vectors. The query below compares raw model embeddings (cosine). The corpus-level
--    PCA-whitening learned by `pipelines.index` usually retrieves better (BENCHMARKS.md); to search
--    with it in BigQuery, load the index's vectors and point the query at them:
--
--      bq load --source_format=PARQUET --parquet_enable_list_inference \
--        videos.video_vectors 'gs://my-bucket/index/run1/vectors-*.parquet'
--
--    then replace `my-project.videos.scores` by `my-project.videos.video_vectors` and `embedding`
--    by `vector` (twice each) below. The vectors are L2-normalised, so COSINE and DOT_PRODUCT rank
--    alike. A video outside the corpus is whitened with `python -m pipelines.search --query_parquet`.
--
-- 3. Model versions. Mixing embeddings of different models in one search is meaningless: filter
--    both sides on `model_version` when the table holds several runs.

SELECT
  result.base.id AS id,
  ROUND(1 - result.distance, 4) AS similarity,
  result.base.labels AS labels,
  ARRAY(
    SELECT label FROM UNNEST(result.base.labels) AS label
    WHERE label IN UNNEST(result.query.labels)
    ORDER BY label
  ) AS shared_labels
FROM
  VECTOR_SEARCH(
    (SELECT id, labels, embedding FROM `my-project.videos.scores`),
    'embedding',
    (SELECT id, labels, embedding FROM `my-project.videos.scores` WHERE id = @video_id),
    'embedding',
    top_k => 11,  -- k + 1: the query video finds itself first (change with LIMIT below)
    distance_type => 'COSINE'
  ) AS result
WHERE result.base.id != result.query.id
ORDER BY result.distance
LIMIT 10;

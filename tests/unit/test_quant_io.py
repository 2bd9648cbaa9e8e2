"""Reading vector slices for the quantize workers, and handing codes to Q-BERT."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qbr_dist import artifacts, pipeline
from qbr_dist.quant import CODES, STATS
from qbr_dist.quant.codes import write_codes
from qbr_dist.quant.worker import read_rows, row_count


def vector_files(tmp_path, sizes=(5, 3, 4), dim=2):
    files, start = [], 0
    for part, n in enumerate(sizes):
        ids = [f"i{start + j}" for j in range(n)]
        values = np.arange(start * dim, (start + n) * dim, dtype=np.float32)
        path = tmp_path / f"part{part}.parquet"
        pq.write_table(pa.table({"item_id": ids, "v": pa.FixedSizeListArray.from_arrays(pa.array(values), dim)}),
                       path, row_group_size=2)
        files.append(path)
        start += n
    return files


@pytest.mark.parametrize("start,stop", [(0, 12), (3, 9), (5, 8), (11, 12), (4, 4), (1, 2), (2, 4), (6, 7)])
def test_read_rows_takes_a_global_range_across_files_and_row_groups(tmp_path, start, stop):
    files = vector_files(tmp_path)
    assert row_count(files) == 12
    ids, vectors = read_rows(files, "v", start, stop)
    assert ids == [f"i{i}" for i in range(start, stop)]
    if stop > start:
        assert vectors[:, 0].tolist() == [2.0 * i for i in range(start, stop)]


def test_read_rows_reads_only_the_row_groups_of_its_range(tmp_path, monkeypatch):
    files = vector_files(tmp_path)  # rows 0-4, 5-7 and 8-11, in row groups of 2
    asked, iter_batches = [], pq.ParquetFile.iter_batches

    def spy(handle, *args, row_groups=None, **kwargs):
        asked.append(row_groups)
        return iter_batches(handle, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert read_rows(files, "v", 6, 7)[0] == ["i6"]
    assert asked == [[0]]  # the second file's first row group (rows 5 and 6); the first file and the third unread


def test_read_rows_refuses_null_vectors(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"item_id": ["a"], "v": pa.nulls(1, pa.list_(pa.float32(), 2))}), path)
    with pytest.raises(ValueError, match="x.parquet: column 'v' has nulls"):
        read_rows([path], "v", 0, 1)


def quantize_dir(tmp_path, item_ids, version="abc"):
    folder = tmp_path / "quantize"
    folder.mkdir()
    codes = np.arange(len(item_ids) * 2).reshape(-1, 2) % 4
    write_codes(folder / CODES, item_ids, codes, np.zeros(len(item_ids), dtype=np.int64), version)
    (folder / STATS).write_text(json.dumps({"levels": [{"counts": [0] * 4}, {"counts": [0] * 4}],
                                            "suffix_table_size": 1}))
    artifacts.write_manifest(folder, {"stage": "quantize"}, outputs=[CODES, STATS], rows={"codebook_version": version})
    return folder


def ingest_dir(tmp_path, item_ids):
    folder = tmp_path / "ingest"
    folder.mkdir()
    pq.write_table(pa.table({"item_id": item_ids, "text": [""] * len(item_ids)}), folder / pipeline.ITEMS)
    return folder


def test_codes_are_laid_out_in_item_order_with_the_table_sizes(tmp_path):
    quantized = quantize_dir(tmp_path, ["a", "b"])
    semantic = pipeline._semantic_codes(ingest_dir(tmp_path, ["b", "a"]), quantized, quantized, tmp_path / "stage")
    codes = np.load(semantic["codes_file"])
    assert codes.tolist() == [[0, 0, 0], [2, 3, 0], [0, 1, 0]]  # row 0 padding, then b, a
    assert semantic["code_sizes"] == [4, 4, 1] and semantic["codebook_version"] == "abc"


def test_catalog_items_without_codes_are_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"codes.parquet: 1 catalog items have no semantic ID \(e.g. 'c'"):
        quantized = quantize_dir(tmp_path, ["a", "b"])
        pipeline._semantic_codes(ingest_dir(tmp_path, ["a", "c"]), quantized, quantized, tmp_path / "stage")


def test_column_matrix_for_fixed_and_variable_lists_and_empty_columns():
    from qbr_dist.data.tables import column_matrix

    fixed = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 3)
    assert column_matrix(pa.chunked_array([fixed, fixed])).shape == (4, 3)
    assert column_matrix(pa.array([[1, 2], [3, 4]]), np.int64).tolist() == [[1, 2], [3, 4]]
    assert column_matrix(fixed.slice(0, 0)).shape == (0, 3)


def test_matrix_column_is_the_inverse_of_column_matrix_and_nulls_invalid_rows():
    from qbr_dist.data.tables import column_matrix, matrix_column

    matrix = np.arange(6, dtype=np.int32).reshape(3, 2)
    column = matrix_column(matrix, valid=np.array([True, False, True]))
    assert column.type == pa.list_(pa.int32(), 2) and column.to_pylist() == [[0, 1], None, [4, 5]]
    assert column_matrix(matrix_column(matrix[:, ::-1]), np.int32).tolist() == matrix[:, ::-1].tolist()

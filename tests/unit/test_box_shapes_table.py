from benchmarks.box_shapes import BOXES, format_table


def test_the_table_counts_hits_and_names_the_wrong_readings():
    rows = {"0.5 centred": {"berry": ["berry", "red circle", "berry", "red circle"], "house": ["house"] * 4}}
    table = format_table(rows, ["berry", "house"], 4)
    assert table.splitlines()[0] == "| box | berry (of 4) | house (of 4) |"
    assert table.splitlines()[2] == "| 0.5 centred | 2 (red circle) | 4 |"


def test_every_box_lies_in_the_canvas():
    for x0, y0, x1, y1 in BOXES.values():
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1

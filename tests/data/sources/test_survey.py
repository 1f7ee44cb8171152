"""Survey point reader: the real DHS clusters, CSV/Parquet/GeoJSON, and every bad-input message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geocnn.data.sources.survey import read_survey
from geocnn.errors import GeocnnError


def write_csv(tmp_path: Path, text: str, name: str = "survey.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def point(lon: object, lat: object, **props: object) -> dict[str, object]:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]}, "properties": props}


def write_geojson(tmp_path: Path, features: list[dict[str, object]]) -> Path:
    path = tmp_path / "survey.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.mark.realdata
def test_dhs_clusters(shared_data: Path) -> None:
    path = shared_data / "poverty/dhs_clusters.csv"
    frame = read_survey(path, targets=["wealthpooled", "households"], group_column="country",
                        urban_column="urban_rural")
    raw = pd.read_csv(path)
    assert len(frame) == 19_669
    assert list(frame.columns) == ["id", "lat", "lon", "wealthpooled", "households", "group", "urban",
                                   "country", "year", "urban_rural"]  # the file's other columns, as read
    assert frame["country"].tolist() == raw["country"].tolist() and frame["year"].dtype.kind == "i"
    assert frame["id"].iloc[0] == "1" and frame["id"].iloc[-1] == "19669" and frame["id"].is_unique
    np.testing.assert_array_equal(frame["lat"].to_numpy(), raw["lat"].to_numpy())
    np.testing.assert_array_equal(frame["lon"].to_numpy(), raw["lon"].to_numpy())
    np.testing.assert_allclose(frame["wealthpooled"].to_numpy(), raw["wealthpooled"].to_numpy())
    assert frame["households"].dtype == np.float64 and frame["households"].sum() == raw["households"].sum()
    assert frame["group"].nunique() == 23 and frame["group"].iloc[0] == "angola"
    assert frame["urban"].value_counts().to_dict() == {"rural": 12_868, "urban": 6_801}
    assert (frame["urban"] == "urban").to_numpy().tolist() == (raw["urban_rural"] == 1).tolist()


def test_csv_with_ids_weights_and_codes(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "cid,latitude,longitude,y,w,area,region\n"
                               "007,6.5,3.4,1.5,2.0,U,west\n"
                               "8,-1.3,36.8,-0.5,0,R,east\n")
    frame = read_survey(path, "latitude", "longitude", ["y"], id_column="cid", group_column="region",
                        urban_column="area", weight_column="w")
    assert frame["id"].tolist() == ["007", "8"]  # ids keep leading zeros
    assert frame[["lat", "lon", "y", "weight"]].to_numpy().tolist() == [[6.5, 3.4, 1.5, 2.0], [-1.3, 36.8, -0.5, 0.0]]
    assert frame["urban"].tolist() == ["urban", "rural"] and frame["group"].tolist() == ["west", "east"]
    dhs_v025 = write_csv(tmp_path, "lat,lon,u\n1,1,1\n2,2,2\n", "v025.csv")
    assert read_survey(dhs_v025, urban_column="u")["urban"].tolist() == ["urban", "rural"]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    pd.DataFrame({"id": [10, 11], "lat": [0.5, 1.5], "lon": [7.0, 8.0], "y": [1, 2]}).to_parquet(path)
    frame = read_survey(path, targets=["y"], id_column="id")
    assert frame["id"].tolist() == ["10", "11"] and frame["y"].tolist() == [1.0, 2.0]


def test_geojson_points(tmp_path: Path) -> None:
    path = write_geojson(tmp_path, [point(3.4, 6.5, name="lagos", y=2.0), point(36.8, -1.3, name="nairobi", y=1)])
    frame = read_survey(path, targets=["y"], id_column="name")
    assert frame.to_dict("list") == {"id": ["lagos", "nairobi"], "lat": [6.5, -1.3], "lon": [3.4, 36.8],
                                     "y": [2.0, 1.0]}


def test_geojson_errors(tmp_path: Path) -> None:
    line = {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "properties": {}}
    path = write_geojson(tmp_path, [point(3.4, 6.5), line])
    with pytest.raises(GeocnnError, match=r"survey\.geojson: feature 2 has a LineString geometry; .*Point"):
        read_survey(path)
    path = write_geojson(tmp_path, [point(3.4, 6.5), {"type": "Feature", "geometry": None, "properties": {}}])
    with pytest.raises(GeocnnError, match="feature 2 has no geometry"):
        read_survey(path)
    path = write_geojson(tmp_path, [point(3.4, 6.5, y="x")])
    with pytest.raises(GeocnnError, match=r"feature 1, column 'y': the value 'x' is not a finite number"):
        read_survey(path, targets=["y"])
    bad = write_csv(tmp_path, "{not json", "bad.geojson")
    with pytest.raises(GeocnnError, match=r"bad\.geojson: not valid GeoJSON"):
        read_survey(bad)


@pytest.mark.parametrize("text, kwargs, pattern", [
    ("lat,lon,y\n1,2,3\n", {"targets": ["wealth"]},
     r"survey\.csv: column\(s\) \['wealth'\] named by config key 'data.targets' not found\. Available columns: "
     r"lat, lon, y"),
    ("latitude,lon\n1,2\n", {},
     r"\['lat'\] named by config key 'earth.lat_column' not found\. Available columns: latitude, lon"),
    ("lat,lon,y\n1,2,3\n,4,5\n", {}, r"survey\.csv: row 3, column 'lat': the value is missing"),
    ("lat,lon,y\n1,2,3\n3,4,NaN\n", {"targets": ["y"]}, r"row 3, column 'y': the value 'NaN' is not a finite number"),
    ("lat,lon,y\n1,2,3\n3,4,abc\n5,6,7\n", {"targets": ["y"]}, r"row 3, column 'y': the value 'abc' is not a finite"),
    ("lat,lon\n1,2\n36.8,-1.3\n123.4,6.5\n", {},
     r"row 4, column 'lat': 123\.4 is outside \[-90, 90\].*swapped"),
    ("lat,lon\n1,200\n", {}, r"row 2, column 'lon': 200\.0 is outside \[-180, 180\].*EPSG:4326"),
    ("lat,lon\n1,2\n0,0\n", {}, r"row 3, columns 'lat'/'lon': the point is \(0, 0\).*DHS"),
    ("id,lat,lon\na,1,2\nb,3,4\na,5,6\n", {"id_column": "id"}, r"column 'id': duplicate id 'a' at row 2, row 4"),
    ("id,lat,lon\na,1,2\n,3,4\n", {"id_column": "id"}, r"row 3, column 'id': the value is missing"),
    ("lat,lon,w\n1,2,-1\n", {"weight_column": "w"}, r"row 2, column 'w': survey weight -1\.0 is negative"),
    ("lat,lon,u\n1,2,town\n", {"urban_column": "u"}, r"row 2, column 'u': 'town' is not an urban/rural code"),
    ("lat,lon,u\n1,2,0\n3,4,2\n", {"urban_column": "u"}, r"row 3, column 'u': the column mixes 0 and 2"),
    ("lat,lon,y\n", {}, r"survey\.csv: the survey file has no rows"),
    ("", {}, r"survey\.csv: the survey file is empty"),
    ("lat,lon,lat2\n1,2,3\n", {"targets": ["lat"]}, r"target column\(s\) \['lat'\] clash"),
])
def test_csv_errors(tmp_path: Path, text: str, kwargs: dict[str, object], pattern: str) -> None:
    path = write_csv(tmp_path, text)
    with pytest.raises(GeocnnError, match=pattern):
        read_survey(path, **kwargs)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GeocnnError, match=r"nothere\.csv: survey file does not exist"):
        read_survey(tmp_path / "nothere.csv")


def test_urban_codes_as_numbers_and_an_explicit_unknown(tmp_path: Path) -> None:
    """1/0, 1.0/0.0 (a float column), 1/2 (DHS v025, 2 = rural) and configured 'not known' values."""
    path = tmp_path / "codes.csv"
    pd.DataFrame({"lat": [1.0, 2.0, 3.0, 4.0, 5.0], "lon": [1.0, 2.0, 3.0, 4.0, 5.0], "y": [1, 2, 3, 4, 5],
                  "u": [1.0, 0.0, 1.0, 9.0, 0.0]}).to_csv(path, index=False)
    frame = read_survey(path, targets=["y"], urban_column="u", urban_unknown=["9"])
    assert frame["urban"].tolist() == ["urban", "rural", "urban", "unknown", "rural"]
    assert frame["u"].tolist() == [1.0, 0.0, 1.0, 9.0, 0.0]  # the column itself is kept as read
    with pytest.raises(GeocnnError, match=r"row 5, column 'u': '9' is not an urban/rural code.*earth.urban_unknown"):
        read_survey(path, targets=["y"], urban_column="u", urban_unknown=["unknown"])
    pd.DataFrame({"lat": [1.0, 2.0], "lon": [1.0, 2.0], "y": [1, 2], "u": ["1", "2"]}).to_csv(path, index=False)
    assert read_survey(path, targets=["y"], urban_column="u")["urban"].tolist() == ["urban", "rural"]

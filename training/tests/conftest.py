import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DATA = Path(os.environ.get("MOE_DATA", Path(__file__).resolve().parents[2] / "data/wikihow19_titles.csv"))

"""Preference selection over self-generated candidates: automatic hand scores (`auto`), a review
page for a person's good/bad marks (`review`), the selection.json both write (`candidates`), and
the chosen candidates as a training dataset (`curate`).

    ipa select auto --candidates CANDS --out selection.json
    ipa select review --candidates CANDS --selection selection.json --port 8765
    ipa select curate --candidates CANDS --selection selection.json --out curated/
"""

from .candidates import Candidate, chosen, load_candidates, read_selection, write_selection

__all__ = ["Candidate", "chosen", "load_candidates", "read_selection", "write_selection"]

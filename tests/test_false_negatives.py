from retr.retriever.false_negatives import SiblingPositives, drop_siblings


def test_siblings_are_positives_of_queries_sharing_a_positive():
    qrels = {"q1": {"a": 1, "b": 2}, "q2": {"b": 1, "c": 1}, "q3": {"c": 1, "d": 1},
             "q4": {"e": 1, "a": 0}, "q5": {"f": 0}}
    s = SiblingPositives(qrels)
    assert s.siblings("q1") == {"c"}  # q2 shares b; q3 shares nothing with q1
    assert s.siblings("q2") == {"a", "d"}
    assert s.siblings("q4") == set()  # a grade-0 judgement links nothing
    assert s.siblings("q5") == set() and s.siblings("unknown") == set()
    assert s.sharing_queries("q2") == {"q1", "q3"}
    assert drop_siblings(["x", "c", "a", "y"], "q1", s) == ["x", "a", "y"]

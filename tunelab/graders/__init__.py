"""OpenAI's graders: a grader as OpenAI's JSON in, a reward and its errors out — for reinforcement
fine-tuning (train/), for scoring evaluations (eval/) and for the server's `/v1/fine_tuning/alpha/graders`.

    spec.py        the grader JSON, checked (the three spellings of `multi.graders` taken)
    templates.py   `{{item.KEY}}` and `{{sample.output_text}}` rendered as OpenAI documents them
    formula.py     `multi.calculate_output`, evaluated without `eval`
    similarity.py  `text_similarity`'s metrics, from the field's libraries
    model.py       `score_model` and `label_model`: a local model or any OpenAI-compatible endpoint
    sandbox.py     `python` graders, run in a separate process that sees nothing of ours (bubblewrap)
    grade.py       one grader over samples: the reward, sub-rewards and OpenAI's metadata
"""

"""The machinery behind the course: what keeps runs safe, and what a learner need not read.

utils.py is the learner's file: the code the notebooks teach, in notebook order. This package holds
what makes that code dependable outside a notebook (the CLI finetune.py, scripts, CI):

    files.py            atomic writes (temp file, fsync, rename); removing what a killed write left
    jsonio.py           strict JSON: UTF-8 only, no NaN, no repeated keys, bounded nesting, clear errors
    checks.py           the course functions' input checks: dataset entries, token IDs, arguments
    network.py          downloads with an overall deadline, the Hugging Face Hub probe
    weights.py          reading GPT-2's weights file safely; what in it does not fit a model
    tokenizer_files.py  GPT-2's vocabulary files: hashes, checking a folder, loading the tokenizer
    precision.py        bf16 where it pays: hardware detection, attention in float32 on a CPU
    fast.py             the bf16 generation copy: made once per set of weights, packed Linear layers, an
                        output head in bf16 that still picks the float32 head's greedy token
    ollama.py           the Ollama client behind the LLM judge (utils.judge_responses)
    scores.py           the judge's replies: parse_score, the summary of a judging run
    checkpoints.py      the checkpoint format (safetensors + CRC-32 per tensor), its validation, resume
    trainer.py          TrainingRun: the training hooks (checkpoint cadence, timed saves, resume,
                        finite-loss stop, max_steps, DDP), seed_everything, the loop's progress bar
    ddp.py              DistributedRun: torchrun + DistributedDataParallel
    batching.py         length-grouped batches (finetune.py --group-by-length)
    near_duplicates.py  near-duplicate entries in a dataset (scripts/dataset_report.py)

Notebook scaffolding (what the notebooks call to show results, not what they teach):

    plots.py            the plot style for projectors, a batch drawn as a grid, the loss curves
    experiments.py      the exercises' comparison table (utils.run_experiment makes its rows)

How runs keep your files safe (a new command, DPO or chat, uses the same pieces):

    OutputFolderLock(out)        files.py: one run per output folder; take it before looking at the folder
    atomic_destination(path)     files.py: temp folder + fsync + rename; a marker inside names the writer,
                                 and remove_stale_temporaries removes only marked folders of dead writers
    save_checkpoint/resume_from  checkpoints.py: a CRC-32 per tensor and per metadata entry; a checkpoint
                                 without checksums is refused (only a foreign plain weights file may lack them)
    fetch/download_file          network.py: one overall deadline per network read (a dripping server is cut);
    hub_download                 the same for the Hub (a child process stopped at its deadline), bytes
                                 checked against the ETag's sha256 (verify_hub_file)
    chat_content                 ollama.py: HTTP 429/5xx tried again with backoff; error bodies capped
    DistributedRun(timeout=...)  ddp.py: the process group's timeout bounds every exchange (--ddp-timeout)

Import rule, one direction only: utils imports from support; nothing in support imports utils
(tests/test_layout.py checks it). Where the machinery needs a course object (the model, the
training state) it is passed in and used by its attributes.

The training-hook protocol. utils.train_model is the course loop; at fixed points it calls a hooks
object (utils.TrainingHooks does nothing, support.trainer.TrainingRun does the work):

    progress                              attribute: show a progress bar
    on_train_start(model, optimizer, state) -> model
                                          before the first step: seed, maybe load a checkpoint into
                                          model, optimizer and state (resume); returns the model to
                                          train (under DDP, the wrapped one)
    epoch_batches(loader, epoch)          the batches of one epoch (an order fixed by seed and epoch)
    micro_batch(last)                     context for one micro-batch's forward and backward (DDP
                                          exchanges gradients after the last one only)
    sum_over_processes(values)            the values summed over all processes (one process: as given)
    should_stop(state)                    True ends the run after this step (max_steps)
    on_step_end(state)                    after each optimizer step and its evaluation: stop on a
                                          non-finite loss, save a checkpoint when one is due
    on_train_end(state)                   after the last step and evaluation: the final checkpoint

`state` is utils.TrainState (step, epoch, batches_done, tokens_seen, last_loss, history, ...). A
new loop (a DPO loop, say) calls the same methods at the same points and gets checkpoints, resume
and DDP for free; a notebook can subclass utils.TrainingHooks to watch a run (notebook 07 records
each step's loss that way).
"""

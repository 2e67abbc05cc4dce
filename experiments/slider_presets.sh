# SliderQuant's per-model presets, sourced by slider.sh and slider_sensitivity.sh so both
# calibrate alike: held-out pieces, calibration sequences and epochs. Needs $model and
# the caller's usage line in $usage; sets evals, calib and epochs.
case $model in
  ref-tiny)  # docs/backends.md's preset: 16 x 128 tokens, 20 epochs (~1-2 min a calibration)
    evals=(eval.limit=16); calib=(calib.samples=16 calib.seq_len=128); epochs=20 ;;
  smollm2-135m)  # 8 x 128 tokens, 8 epochs (~10 min a calibration on 2 cores)
    evals=(eval.limit=8 eval.text_by=lwq); calib=(calib.samples=8 calib.seq_len=128); epochs=8 ;;
  *) echo "$usage" >&2; exit 2 ;;
esac

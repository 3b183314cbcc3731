package scoring.jvm;

import ai.onnxruntime.NodeInfo;
import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxValue;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import ai.onnxruntime.TensorInfo;
import java.io.File;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.spark.SparkFiles;
import org.apache.spark.api.java.function.MapPartitionsFunction;
import org.apache.spark.sql.Column;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.functions;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;

/**
 * Scores a DataFrame with an ONNX model inside the executor JVM (ONNX Runtime's Java API): no Python worker, no
 * Arrow round trip.
 *
 * <p>The model is a file with one 2-D float input {@code [rows, features]} and one float output of one value per row
 * ({@code [rows]} or {@code [rows, 1]}), as the project's skl2onnx export gives. Rows are scored in batches of
 * {@code batchRows}: the features of a batch are written into one direct float buffer (reused for the whole
 * partition) that backs the input tensor without a copy; one {@code run} per batch.
 *
 * <p>One {@link OrtSession} per JVM per (model file, threads): cached in a static map, shared by every task of the
 * executor ({@code OrtSession.run} is thread-safe), never closed (it lives as long as the executor).
 *
 * <p>From PySpark: {@code spark._jvm.scoring.jvm.OnnxScorer.score(df._jdf, path, features, passthrough, "prediction",
 * 10000, 1)} and wrap the result with {@code pyspark.sql.DataFrame(jdf, spark)}.
 */
public final class OnnxScorer {

  private static final Map<String, OrtSession> SESSIONS = new ConcurrentHashMap<>();

  private OnnxScorer() {}

  /**
   * The rows of {@code df} with the {@code passthrough} columns (unchanged) and a float column {@code prediction}:
   * the model's output for the {@code features} columns (cast to float, in that order). A null feature fails the
   * task with the column's name; so does a model output that does not give one float per row.
   */
  public static Dataset<Row> score(
      Dataset<Row> df,
      String modelPath,
      String[] features,
      String[] passthrough,
      String prediction,
      int batchRows,
      int intraOpThreads) {
    if (batchRows < 1) {
      throw new IllegalArgumentException("batchRows must be >= 1, not " + batchRows);
    }
    // checked once on the driver: the model loads, takes as many features as given and gives floats
    Signature signature = signature(session(modelPath, intraOpThreads), modelPath);
    if (signature.features > 0 && signature.features != features.length) {
      throw new IllegalArgumentException(
          String.format(
              "model %s takes %d features, %d columns given: %s",
              modelPath, signature.features, features.length, Arrays.toString(features)));
    }
    List<Column> selected = new ArrayList<>();
    for (String name : passthrough) {
      selected.add(functions.col(name));
    }
    for (String name : features) {
      selected.add(functions.col(name).cast(DataTypes.FloatType));
    }
    Dataset<Row> input = df.select(selected.toArray(new Column[0]));
    List<StructField> fields = new ArrayList<>();
    for (String name : passthrough) {
      fields.add(input.schema().apply(name));
    }
    fields.add(DataTypes.createStructField(prediction, DataTypes.FloatType, false));
    StructType outputSchema = DataTypes.createStructType(fields);
    ScorePartition fn =
        new ScorePartition(modelPath, features, passthrough.length, batchRows, intraOpThreads);
    return input.mapPartitions(fn, Encoders.row(outputSchema));
  }

  /** A description of the model's input and output, for a driver-side check from Python. */
  public static String describe(String modelPath) {
    try {
      OrtSession session = session(modelPath, 1);
      return "inputs=" + session.getInputInfo() + " outputs=" + session.getOutputInfo();
    } catch (OrtException e) {
      throw new IllegalStateException("cannot describe ONNX model " + modelPath + ": " + e.getMessage(), e);
    }
  }

  /** How many sessions this JVM holds (one per model file and thread count): for tests. */
  public static int cachedSessions() {
    return SESSIONS.size();
  }

  static OrtSession session(String modelPath, int intraOpThreads) {
    String key = modelPath + "#" + intraOpThreads;
    return SESSIONS.computeIfAbsent(key, k -> open(modelPath, intraOpThreads));
  }

  private static OrtSession open(String modelPath, int intraOpThreads) {
    String local = locate(modelPath);
    try {
      OrtEnvironment env = OrtEnvironment.getEnvironment();
      OrtSession.SessionOptions options = new OrtSession.SessionOptions();
      // two tasks per 2-core executor, each with its own thread: more threads oversubscribe (FIELD-NOTES)
      options.setIntraOpNumThreads(intraOpThreads);
      options.setInterOpNumThreads(1);
      return env.createSession(local, options);
    } catch (OrtException e) {
      throw new IllegalStateException("cannot load ONNX model " + local + ": " + e.getMessage(), e);
    }
  }

  /** The path itself where it exists on this machine, else the file of that name shipped with SparkFiles. */
  private static String locate(String modelPath) {
    if (new File(modelPath).isFile()) {
      return modelPath;
    }
    String shipped = SparkFiles.get(new File(modelPath).getName());
    if (new File(shipped).isFile()) {
      return shipped;
    }
    throw new IllegalArgumentException(
        "ONNX model " + modelPath + " is neither on this machine nor shipped with SparkFiles (" + shipped + ")");
  }

  static final class Signature {
    final String input;
    final long features;

    Signature(String input, long features) {
      this.input = input;
      this.features = features;
    }
  }

  static Signature signature(OrtSession session, String modelPath) {
    try {
      if (session.getNumInputs() != 1 || session.getNumOutputs() < 1) {
        throw new IllegalArgumentException(
            "model " + modelPath + " must have one input and at least one output: " + describe(modelPath));
      }
      Map.Entry<String, NodeInfo> input = session.getInputInfo().entrySet().iterator().next();
      if (!(input.getValue().getInfo() instanceof TensorInfo)) {
        throw new IllegalArgumentException("model " + modelPath + ": input " + input.getKey() + " is not a tensor");
      }
      TensorInfo info = (TensorInfo) input.getValue().getInfo();
      long[] shape = info.getShape();
      if (shape.length != 2 || info.type != ai.onnxruntime.OnnxJavaType.FLOAT) {
        throw new IllegalArgumentException(
            "model " + modelPath + ": input " + input.getKey() + " must be float [rows, features], is " + info);
      }
      return new Signature(input.getKey(), shape[1]);
    } catch (OrtException e) {
      throw new IllegalStateException("cannot read ONNX model " + modelPath + ": " + e.getMessage(), e);
    }
  }

  /** One partition: rows in, scored batch by batch, rows out (lazily: one batch held at a time). */
  static final class ScorePartition implements MapPartitionsFunction<Row, Row> {
    private static final long serialVersionUID = 1L;
    private final String modelPath;
    private final String[] features;
    private final int passthrough;
    private final int batchRows;
    private final int intraOpThreads;

    ScorePartition(String modelPath, String[] features, int passthrough, int batchRows, int intraOpThreads) {
      this.modelPath = modelPath;
      this.features = features;
      this.passthrough = passthrough;
      this.batchRows = batchRows;
      this.intraOpThreads = intraOpThreads;
    }

    @Override
    public Iterator<Row> call(Iterator<Row> rows) {
      if (!rows.hasNext()) {
        return Collections.emptyIterator();
      }
      OrtSession session = session(modelPath, intraOpThreads);
      return new Batches(rows, session, signature(session, modelPath).input, this);
    }
  }

  static final class Batches implements Iterator<Row> {
    private final Iterator<Row> rows;
    private final OrtSession session;
    private final String input;
    private final ScorePartition spec;
    private final int nFeatures;
    private final FloatBuffer buffer;
    private final Object[] kept;
    private float[] predictions = new float[0];
    private int size;
    private int next;

    Batches(Iterator<Row> rows, OrtSession session, String input, ScorePartition spec) {
      this.rows = rows;
      this.session = session;
      this.input = input;
      this.spec = spec;
      this.nFeatures = spec.features.length;
      this.buffer =
          ByteBuffer.allocateDirect(spec.batchRows * nFeatures * Float.BYTES)
              .order(ByteOrder.nativeOrder())
              .asFloatBuffer();
      this.kept = new Object[spec.batchRows * spec.passthrough];
    }

    @Override
    public boolean hasNext() {
      if (next < size) {
        return true;
      }
      if (!rows.hasNext()) {
        return false;
      }
      fill();
      return size > 0;
    }

    @Override
    public Row next() {
      if (!hasNext()) {
        throw new NoSuchElementException();
      }
      int p = spec.passthrough;
      Object[] values = new Object[p + 1];
      System.arraycopy(kept, next * p, values, 0, p);
      values[p] = predictions[next];
      next++;
      return RowFactory.create(values);
    }

    private void fill() {
      int p = spec.passthrough;
      int n = 0;
      buffer.clear();
      while (n < spec.batchRows && rows.hasNext()) {
        Row row = rows.next();
        for (int i = 0; i < p; i++) {
          kept[n * p + i] = row.get(i);
        }
        for (int j = 0; j < nFeatures; j++) {
          if (row.isNullAt(p + j)) {
            throw new IllegalArgumentException(
                "feature " + spec.features[j] + " is null (model " + spec.modelPath + ")");
          }
          buffer.put(row.getFloat(p + j));
        }
        n++;
      }
      buffer.flip();
      predictions = run(buffer, n);
      size = n;
      next = 0;
    }

    private float[] run(FloatBuffer data, int n) {
      OrtEnvironment env = OrtEnvironment.getEnvironment();
      try (OnnxTensor tensor = OnnxTensor.createTensor(env, data, new long[] {n, nFeatures});
          OrtSession.Result result = session.run(Collections.singletonMap(input, tensor))) {
        OnnxValue value = result.get(0);
        if (!(value instanceof OnnxTensor)) {
          throw new IllegalStateException("model " + spec.modelPath + " returned " + value.getType() + ", not a tensor");
        }
        OnnxTensor out = (OnnxTensor) value;
        TensorInfo info = out.getInfo();
        long[] shape = info.getShape();
        boolean oneValuePerRow =
            info.type == ai.onnxruntime.OnnxJavaType.FLOAT
                && shape.length >= 1
                && shape[0] == n
                && (shape.length == 1 || (shape.length == 2 && shape[1] == 1));
        if (!oneValuePerRow) {
          throw new IllegalStateException(
              String.format(
                  "model %s returned %s %s for a batch of %d rows; one float per row expected",
                  spec.modelPath, info.type, Arrays.toString(shape), n));
        }
        FloatBuffer values = out.getFloatBuffer();
        float[] predictions = new float[n];
        values.get(predictions);
        return predictions;
      } catch (OrtException e) {
        throw new IllegalStateException(
            "ONNX Runtime failed on a batch of " + n + " rows (model " + spec.modelPath + "): " + e.getMessage(), e);
      }
    }
  }
}
